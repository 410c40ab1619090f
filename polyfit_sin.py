"""
PyTorch: Tensors
----------------

A third order polynomial, trained to predict :math:`y=\\sin(x)` from :math:`-\\pi`
to :math:`\\pi` by minimizing squared Euclidean distance.

This implementation uses PyTorch tensors to manually compute the forward pass,
loss, and backward pass: no autograd, no ``torch.nn``, no ``torch.optim``.

A PyTorch Tensor is basically the same as a numpy array: it does not know
anything about deep learning or computational graphs or gradients, and is just
a generic n-dimensional array to be used for arbitrary numeric computation.

The biggest difference between a numpy array and a PyTorch Tensor is that
a PyTorch Tensor can run on either CPU or GPU. Here ``--device`` picks which:
by default the machine's accelerator (a CUDA GPU, say) if it has one, else the CPU.

Run it with ``python polyfit_sin.py``; ``python polyfit_sin.py --help`` lists
the flags.
"""

# %%
import argparse
import math
import sys

import torch

# %%
# The fit
# -------
#
# ``fit`` creates the data, draws random starting weights a, b, c, d, and runs
# gradient descent: a forward pass, the loss, a backward pass derived by hand,
# and an update, on every step.


def fit(steps=2000, learning_rate=1e-6, seed=0, device="cpu"):
    """Fit y = a + b x + c x^2 + d x^3 to y = sin(x), printing the loss every 100 steps.

    Returns a, b, c, d and the loss of that cubic, as Python floats.
    Raises FloatingPointError if the loss diverges (the learning rate is too large).
    """
    # Create input and output data: 2000 evenly spaced points from -pi to pi,
    # made directly on the device
    x = torch.linspace(-torch.pi, torch.pi, 2000, device=device, dtype=torch.float32)
    y = torch.sin(x)
    # x² and x³ never change, so compute them once rather than on every step
    x2 = x * x
    x3 = x2 * x

    # Randomly initialize weights. Our own generator, seeded, gives the same start
    # on every run and on every device, and leaves PyTorch's global random state
    # (which a notebook may be using) alone.
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn((), generator=generator, dtype=torch.float32).to(device)
    b = torch.randn((), generator=generator, dtype=torch.float32).to(device)
    c = torch.randn((), generator=generator, dtype=torch.float32).to(device)
    d = torch.randn((), generator=generator, dtype=torch.float32).to(device)

    # inference_mode() tells PyTorch that nothing in this block needs autograd,
    # so it skips the bookkeeping autograd would do on every operation
    with torch.inference_mode():
        # The loss of the starting weights, which every step should lower.
        # error.dot(error) multiplies the vector error by itself point by point
        # and sums, in one operation: Σ (y_pred - y)²
        error = a + b * x + c * x2 + d * x3 - y
        previous_loss = error.dot(error).item()

        for t in range(steps):
            # Forward pass: compute predicted y
            y_pred = a + b * x + c * x2 + d * x3
            error = y_pred - y

            # Compute and print the loss, every 100 steps only. .item() copies a
            # number from the device to Python; on a GPU that means waiting until
            # the GPU has finished everything queued so far. On the other steps
            # nothing waits, so Python queues the next steps while the GPU works.
            if t % 100 == 99:
                loss = error.dot(error).item()
                check_loss(loss, previous_loss, t, learning_rate)
                print(t, loss)
                previous_loss = loss

            # Backward pass: compute gradients of the loss with respect to a, b, c, d
            #   loss = Σ (y_pred - y)², summed over the 2000 points, so
            #   ∂loss/∂y_pred = 2 (y_pred - y), one number per point.
            # y_pred = a + b x + c x² + d x³, so ∂y_pred/∂a = 1, ∂y_pred/∂b = x,
            # ∂y_pred/∂c = x², ∂y_pred/∂d = x³, and by the chain rule
            #   ∂loss/∂a = Σ ∂loss/∂y_pred · ∂y_pred/∂a = Σ 2 (y_pred - y)
            #   ∂loss/∂b = Σ 2 (y_pred - y) x
            #   ∂loss/∂c = Σ 2 (y_pred - y) x²
            #   ∂loss/∂d = Σ 2 (y_pred - y) x³
            grad_y_pred = 2.0 * error  # ∂loss/∂y_pred
            grad_a = grad_y_pred.sum()  # ∂loss/∂a
            grad_b = grad_y_pred.dot(x)  # ∂loss/∂b, Σ of a product, as above
            grad_c = grad_y_pred.dot(x2)  # ∂loss/∂c
            grad_d = grad_y_pred.dot(x3)  # ∂loss/∂d

            # Update weights using gradient descent: a small step downhill.
            # a.sub_(grad_a, alpha=learning_rate) does a -= learning_rate * grad_a
            # as one operation instead of two, in place (the trailing _).
            a.sub_(grad_a, alpha=learning_rate)
            b.sub_(grad_b, alpha=learning_rate)
            c.sub_(grad_c, alpha=learning_rate)
            d.sub_(grad_d, alpha=learning_rate)

        # The loss of the fitted weights, after the last update
        error = a + b * x + c * x2 + d * x3 - y
        loss = error.dot(error).item()
        check_loss(loss, previous_loss, steps, learning_rate)

    return a.item(), b.item(), c.item(), d.item(), loss


def check_loss(loss, previous_loss, t, learning_rate):
    """Raise FloatingPointError if the loss has diverged by step t.

    The loss is a bowl-shaped quadratic in a, b, c, d, so with a small enough
    learning rate every step lowers it. A loss that rose since the last check,
    or overflowed to inf or nan, means the steps are too large. The 0.1% margin
    leaves room for float32 rounding once the fit has converged.
    """
    if not math.isfinite(loss) or loss > previous_loss * 1.001:
        raise FloatingPointError(
            f"the loss diverged at step {t} (it went from {previous_loss:.4g} to {loss:.4g}); "
            f"the learning rate {learning_rate:g} is too large, try a smaller one"
        )


# %%
# The command line
# ----------------
#
# ``--device``, ``--steps``, ``--lr`` and ``--seed`` change the run. A mistyped
# flag or value stops with argparse's usage message and exit status 2; a fit
# whose loss diverges stops with a one-line message and exit status 1.


def device_name(name):
    """argparse type for --device: auto, cpu, or an accelerator this machine has."""
    available = ["auto", "cpu"]
    if torch.accelerator.is_available():
        kind = torch.accelerator.current_accelerator().type  # "cuda", say
        available.append(kind)
        available += [f"{kind}:{i}" for i in range(torch.accelerator.device_count())]
    if name not in available:
        raise argparse.ArgumentTypeError(
            f"{name!r} is not a device on this machine (available: {', '.join(available)})"
        )
    return name


def whole_number(low, high=math.inf):
    """argparse type: a whole number from low to high."""
    if high < math.inf:
        expected = f"a whole number from {low} to {high}"
    else:
        expected = f"a whole number of at least {low}"

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


def positive_number(text):
    """argparse type for --lr: a positive, finite number."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(
            f"expected a positive number such as 1e-6, got {text!r}"
        )
    return value


def parse_args(argv):
    """Return the argument parser and the flags parsed from argv."""
    parser = argparse.ArgumentParser(
        prog="polyfit_sin.py",
        description="Fit y = a + b x + c x^2 + d x^3 to y = sin(x) on [-pi, pi] "
        "by gradient descent, with gradients derived by hand.",
        epilog="Exit status: 0 on success, 1 if the loss diverges (or torch is "
        "older than 2.6), 2 for a bad flag or value.",
    )
    parser.add_argument(
        "--device",
        type=device_name,
        default="auto",
        help="where to compute: auto (the default: the machine's accelerator, "
        "such as a CUDA GPU, if it has one, else the CPU), cpu, cuda or cuda:N",
    )
    parser.add_argument(
        "--steps",
        type=whole_number(1),
        default=2000,
        help="number of gradient descent steps (default: 2000)",
    )
    parser.add_argument(
        "--lr",
        type=positive_number,
        default=1e-6,
        help="learning rate, the size of each step (default: 1e-6); "
        "above about 3.5e-6 the loss diverges",
    )
    parser.add_argument(
        "--seed",
        type=whole_number(0, 2**64 - 1),
        default=0,
        help="seed for the random starting a, b, c, d (default: 0); "
        "the same seed always prints the same numbers",
    )
    return parser, parser.parse_args(argv)


def command_line_args():
    """The flags typed after `python polyfit_sin.py`, or none in a notebook cell.

    A Jupyter kernel leaves its own flags in sys.argv (-f kernel-....json),
    which are not ours. Code pasted into a cell has no __file__.
    """
    pasted_into_notebook = "__file__" not in globals() and "ipykernel" in sys.modules
    return [] if pasted_into_notebook else sys.argv[1:]


def main(argv=None):
    """Run the fit as `python polyfit_sin.py` does; argv defaults to the command line."""
    if not hasattr(torch, "accelerator"):
        sys.exit(
            f"polyfit_sin.py needs torch 2.6 or newer (for torch.accelerator), "
            f"this is torch {torch.__version__}: pip install -r requirements.txt"
        )
    parser, args = parse_args(command_line_args() if argv is None else argv)
    if args.device != "auto":
        device = torch.device(args.device)
    elif torch.accelerator.is_available():
        device = torch.accelerator.current_accelerator()
    else:
        device = torch.device("cpu")
    print(f"Using {device} device")

    try:
        a, b, c, d, _ = fit(args.steps, args.lr, args.seed, device)
    except FloatingPointError as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    print(f"Result: y = {a} + {b} x + {c} x^2 + {d} x^3")


if __name__ == "__main__":
    main()
