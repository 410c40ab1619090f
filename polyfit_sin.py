# %% [markdown]
"""
PyTorch: Tensors
================

Fit y = a + b x + c x² + d x³ to y = sin(x) on [−π, π] by gradient descent,
with the four weights as tensors and every gradient derived by hand.

A tensor is PyTorch's array of numbers, and works much like a numpy array.
Two differences show here: a tensor can live on a GPU as well as on the CPU,
and torch computes in float32 by default, where numpy uses float64. PyTorch
can also record what is done to tensors and compute the gradients itself
(autograd, the next lesson); this lesson works them out by hand instead.

Run it with ``python polyfit_sin.py``; ``--help`` lists the flags. The ``# %%``
lines split the file into notebook cells.
"""

# %%
import argparse
import math
import sys

import torch

# Compute on the machine's accelerator (a CUDA GPU, say) if it has one, else the CPU
default_device = (
    torch.accelerator.current_accelerator().type
    if torch.accelerator.is_available()
    else "cpu"
)

# %% [markdown]
# The fit
# -------
#
# ``fit`` makes the data, draws random starting weights, then repeats one step
# of gradient descent: a forward pass, the loss, a backward pass and an update.


# %%
def fit(steps=2000, learning_rate=1e-6, seed=0, device=default_device):
    """Print the loss every 100 steps and the fitted cubic; return a, b, c, d."""
    if not 0 < learning_rate < math.inf:  # 0 stands still, and below 0 climbs uphill
        raise ValueError(f"expected a positive learning rate, got {learning_rate}")
    print(f"Using {device} device")

    # 2000 evenly spaced points from -π to π, made on the device, and sin(x) there
    x = torch.linspace(-math.pi, math.pi, 2000, device=device, dtype=torch.float32)
    y = torch.sin(x)
    # x² and x³ never change, so compute them once rather than on every step
    x2 = x * x
    x3 = x2 * x

    # Random starting weights: torch.randn(()) is a 0-d tensor, a single number. They
    # are drawn on the CPU, then moved, so that a seed gives the same start anywhere.
    torch.manual_seed(seed)
    a = torch.randn((), dtype=torch.float32).to(device)
    b = torch.randn((), dtype=torch.float32).to(device)
    c = torch.randn((), dtype=torch.float32).to(device)
    d = torch.randn((), dtype=torch.float32).to(device)

    previous_loss = math.inf
    for t in range(steps + 1):  # one pass more, to check the fitted weights' loss
        # Forward pass: the cubic's prediction at every point, and how far off it is
        y_pred = a + b * x + c * x2 + d * x3
        error = y_pred - y

        # The backward pass needs only the error, so the loss is computed only on the
        # steps that print it or check it (the first, every 100th, the end): .item()
        # copies it to Python, and on a GPU that waits for all the work queued so far.
        if t % 100 == 99 or t in (0, steps):
            # Loss: the squared error, summed over the points. A sum, not a mean, so
            # the gradients grow with the number of points and the steps must be
            # small: stable only below a learning rate of about 3.56e-6 (README).
            loss = error.pow(2).sum().item()
            # Below the stable rate each step lowers the loss, give or take float32
            # rounding once it has converged: a rise of over 1e-5 of it is divergence.
            if not loss < previous_loss * (1 + 1e-5):  # nan and inf fail this too
                raise FloatingPointError(
                    f"the loss diverged at step {t}: the learning rate "
                    f"{learning_rate:g} is too large, try a smaller one"
                )
            previous_loss = loss
            if t % 100 == 99 and t < steps:
                print(t, loss)
        if t == steps:
            break

        # Backward pass: the gradient of the loss with respect to each weight.
        # loss = Σ error², so ∂loss/∂y_pred = 2 error = 2 (y_pred − y) at each point.
        # y_pred = a + b x + c x² + d x³, so ∂y_pred/∂a = 1, ∂y_pred/∂b = x,
        # ∂y_pred/∂c = x², ∂y_pred/∂d = x³. The chain rule multiplies, then sums:
        grad_y_pred = 2.0 * error
        grad_a = grad_y_pred.sum()  # ∂loss/∂a = Σ 2 (y_pred − y)
        grad_b = (grad_y_pred * x).sum()  # ∂loss/∂b = Σ 2 (y_pred − y) x
        grad_c = (grad_y_pred * x2).sum()  # ∂loss/∂c = Σ 2 (y_pred − y) x²
        grad_d = (grad_y_pred * x3).sum()  # ∂loss/∂d = Σ 2 (y_pred − y) x³

        # Update: move each weight a small step against its gradient, downhill
        a -= learning_rate * grad_a
        b -= learning_rate * grad_b
        c -= learning_rate * grad_c
        d -= learning_rate * grad_d

    a, b, c, d = a.item(), b.item(), c.item(), d.item()
    print(f"Result: y = {a} + {b} x + {c} x^2 + {d} x^3")
    return a, b, c, d


# %% [markdown]
# The command line
# ----------------
#
# A bad flag or value stops with a usage message and exit status 2, a fit whose
# loss diverges with one line and exit status 1.


# %%
def main(argv=None):
    """Run the fit with the command line's flags, or with argv if given."""
    devices = ["cpu"]
    if torch.accelerator.is_available():
        count = torch.accelerator.device_count()
        devices += [default_device] + [f"{default_device}:{i}" for i in range(count)]

    parser = argparse.ArgumentParser(
        prog="polyfit_sin.py",
        description="Fit y = a + b x + c x^2 + d x^3 to y = sin(x) on [-pi, pi] "
        "by gradient descent, with gradients derived by hand.",
    )
    parser.add_argument(
        "--device",
        choices=devices,
        default=default_device,
        help="where to compute (default: %(default)s, the machine's accelerator "
        "if it has one, else the CPU)",
    )
    parser.add_argument(
        "--steps", type=int, default=2000, help="gradient descent steps (default: 2000)"
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=1e-6,
        help="learning rate (default: 1e-6); the loss diverges above about 3.56e-6",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for the starting weights (default: 0)"
    )
    if argv is None and "__file__" not in globals() and "ipykernel" in sys.modules:
        argv = []  # pasted into a notebook: sys.argv holds the kernel's flags, not ours
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"argument --steps: expected at least 1, got {args.steps}")
    if not 0 < args.lr < math.inf:
        parser.error(f"argument --lr: expected a positive number, got {args.lr}")
    if not 0 <= args.seed < 2**64:
        parser.error(f"argument --seed: expected 0 to 2**64-1, got {args.seed}")

    try:
        fit(args.steps, args.lr, args.seed, args.device)
    except FloatingPointError as error:
        sys.stdout.flush()  # so that in one log the loss lines come before the error
        parser.exit(1, f"{parser.prog}: error: {error}\n")


if __name__ == "__main__":
    main()
