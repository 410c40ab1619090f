"""What both test files need: main() run in this process, and the fit solved exactly."""

import torch

import polyfit_sin

CUBIC = [0, 1, 2, 3]  # the powers of x in y = a + b x + c x² + d x³


def run_main(capsys, *args):
    """Run polyfit_sin.main(ARGS) in this process; return (exit status, stdout, stderr).

    Anything but a normal return or SystemExit (a traceback, to a user) fails the test.
    """
    try:
        polyfit_sin.main(list(args))
        status = 0
    except SystemExit as stop:
        status = stop.code
    out, err = capsys.readouterr()
    return status, out, err


def grid_columns(powers):
    """x at the script's 2000 float32 points, in float64, and its powers as columns."""
    x = torch.linspace(-torch.pi, torch.pi, 2000).double()
    return x, torch.stack([x**p for p in powers], dim=1)


def best_fit(powers):
    """The least-squares fit with these powers of x: coefficients, loss, largest gap."""
    x, X = grid_columns(powers)
    y = torch.sin(x)
    solution = torch.linalg.lstsq(X, y.unsqueeze(1)).solution.squeeze(1)
    error = X @ solution - y
    return solution.tolist(), (error**2).sum().item(), error.abs().max().item()


def curvatures(powers):
    """The eigenvalues of the loss's Hessian, 2 XᵀX for the columns X, rising."""
    _, X = grid_columns(powers)
    return torch.linalg.eigvalsh(2 * X.T @ X).tolist()
