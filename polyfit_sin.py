# %% [markdown]
"""
PyTorch: Tensors
================

A third order polynomial, y = a + b x + c x² + d x³, trained to predict
y = sin(x) from −π to π by minimizing squared Euclidean distance.

This implementation uses PyTorch tensors to compute the forward pass, the loss
and the backward pass by hand: no autograd, no ``torch.nn``, no ``torch.optim``.

A PyTorch Tensor is much like a numpy array: an n-dimensional array of numbers
for arbitrary numeric computation. Tensors can also record the operations done
on them and compute gradients for you (autograd, the subject of the next
lesson); this lesson does not use that machinery, and derives every gradient
itself.

The biggest difference between a numpy array and a PyTorch Tensor is that
a PyTorch Tensor can run on either CPU or GPU. Here ``--device`` picks which:
by default the machine's accelerator (a CUDA GPU, say) if it has one, else the CPU.

Run it with ``python polyfit_sin.py``; ``python polyfit_sin.py --help`` lists
the flags.
"""

# %%
import argparse
import math
import os
import sys

import torch

# %% [markdown]
# The fit
# -------
#
# ``fit`` creates the data, draws random starting weights a, b, c, d, and runs
# gradient descent: on every step a forward pass, the loss, a backward pass
# derived by hand, and an update.


# %%
def fit(steps=2000, learning_rate=1e-6, seed=0, device="cpu"):
    """Fit y = a + b x + c x^2 + d x^3 to y = sin(x), printing the loss every 100 steps.

    Returns a, b, c, d and the loss of that cubic, as Python floats.
    Raises ValueError for a learning rate that is not a positive float32 number,
    FloatingPointError if the loss diverges (the learning rate is too large).
    """
    # A rate of 0 stands still, one below 0 climbs uphill, and the steps are float32
    if not 0 < learning_rate <= 3.4e38:
        raise ValueError(
            f"the learning rate must be positive, at most 3.4e38, got {learning_rate}"
        )
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

    # Nothing here requires gradients, so autograd records no graph either way.
    # inference_mode() also skips the checks and counters PyTorch keeps on every
    # operation in case autograd needs them: on a 2-core CPU, fit()'s fastest run
    # takes 15% to 21% less time with it than without.
    with torch.inference_mode():
        # The loss of the starting weights, which every step should lower.
        # error.dot(error) multiplies the vector error by itself point by point
        # and sums, in one operation: Σ (y_pred - y)².
        # The loss is a sum over the 2000 points, not a mean, as in the original
        # lesson; that is why the learning rate is so small. The sum's curvature
        # grows with the number of points, and steps are stable only below
        # 2 / (its largest curvature) ≈ 3.56e-6. A mean would make the gradients
        # 2000 times smaller and that limit 2000 times larger (≈ 7.1e-3).
        error = a + b * x + c * x2 + d * x3 - y
        previous_loss = error.dot(error).item()

        for t in range(steps):
            # Forward pass: compute predicted y
            y_pred = a + b * x + c * x2 + d * x3
            error = y_pred - y

            # Compute and print the loss, every 100 steps only. t counts from 0,
            # so the line "99 ..." is the loss of the 100th step's prediction,
            # before that step's update.
            # .item() copies a number from the device to Python; on a GPU that
            # means waiting until the GPU has finished everything queued so far.
            # On the other steps nothing waits, so Python queues the next steps
            # while the GPU works.
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

        # Check the end too: the loss of the last step's prediction (error still
        # holds it), then the loss of the fitted weights, after the last update.
        # A loss that rose over the last step is caught even between printed lines.
        last_step_loss = error.dot(error).item()
        check_loss(last_step_loss, previous_loss, steps - 1, learning_rate)
        error = a + b * x + c * x2 + d * x3 - y
        loss = error.dot(error).item()
        check_loss(loss, last_step_loss, steps, learning_rate)

    return a.item(), b.item(), c.item(), d.item(), loss


def check_loss(loss, previous_loss, t, learning_rate):
    """Raise FloatingPointError if the loss is not finite or has risen by more than
    1e-5 of itself since the last check.

    The loss is a bowl-shaped quadratic in a, b, c, d. Below the stable learning
    rate (≈ 3.56e-6) every step lowers it, except that float32 rounding moves a
    converged loss by a unit or two in its last place (2.2e-7 of it at most,
    measured). A rise of more than 1e-5 of the loss, 45 times that, means the
    steps are too large.
    """
    if not math.isfinite(loss):
        change = f"it grew from {previous_loss:.4g} past what float32 can hold"
    elif loss > previous_loss * (1 + 1e-5):
        change = f"it rose from {previous_loss:.7g} to {loss:.7g}"
    else:
        return
    raise FloatingPointError(
        f"the loss diverged at step {t} ({change}); "
        f"the learning rate {learning_rate:g} is too large, try a smaller one"
    )


# %% [markdown]
# The command line
# ----------------
#
# ``python polyfit_sin.py --help`` lists the flags. A mistyped flag or value
# stops with argparse's usage message and exit status 2; a fit whose loss
# diverges stops with a one-line message and exit status 1.


# %%
def main(argv=None):
    """Run the fit as ``python polyfit_sin.py`` does; argv defaults to the command line."""
    if not hasattr(torch, "accelerator"):
        sys.exit(
            f"polyfit_sin.py needs torch 2.6 or newer (for torch.accelerator), "
            f"this is torch {torch.__version__}: pip install -r requirements.txt"
        )
    devices = ["auto", "cpu"]
    if torch.accelerator.is_available():
        kind = torch.accelerator.current_accelerator().type  # "cuda", say
        devices += [kind] + [
            f"{kind}:{i}" for i in range(torch.accelerator.device_count())
        ]

    parser = argparse.ArgumentParser(
        prog="polyfit_sin.py",
        description="Fit y = a + b x + c x^2 + d x^3 to y = sin(x) on [-pi, pi] "
        "by gradient descent, with gradients derived by hand.",
        epilog="Exit status: 0 on success, 1 if the loss diverges (or torch is "
        "older than 2.6), 2 for a bad flag or value, 141 if the output's reader "
        "closes while it still writes (| head).",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="where to compute: auto (the default: the machine's accelerator, "
        "such as a CUDA GPU, if it has one, else the CPU), cpu, cuda or cuda:N",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=2000,
        help="number of gradient descent steps, at least 1 (default: 2000)",
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=1e-6,
        help="learning rate, the size of each step (default: 1e-6); the loss "
        "diverges above 2 / (its largest curvature), about 3.56e-6",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for the random starting a, b, c, d, 0 to 2**64-1 (default: 0); "
        "the same seed prints the same numbers on the same machine and PyTorch",
    )
    if argv is None and "__file__" not in globals() and "ipykernel" in sys.modules:
        argv = []  # pasted into a notebook: sys.argv holds the kernel's flags, not ours
    args = parser.parse_args(argv)
    if args.device not in devices:
        parser.error(
            f"argument --device: {args.device!r} is not a device on this machine "
            f"(available: {', '.join(devices)})"
        )
    if args.steps < 1:
        parser.error(f"argument --steps: expected at least 1, got {args.steps}")
    if not 0 < args.lr <= 3.4e38:  # the largest float32 is 3.40282e38
        parser.error(
            f"argument --lr: expected a positive number (at most 3.4e38), got {args.lr}"
        )
    if not 0 <= args.seed < 2**64:
        parser.error(f"argument --seed: expected 0 to 2**64-1, got {args.seed}")

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
    try:
        main()
        sys.stdout.flush()  # so that a closed pipe shows here, not at exit
    except BrokenPipeError:
        # The reader of our output has gone (python polyfit_sin.py | head -3).
        # Stop quietly, as Python's signal docs show: point stdout at devnull so
        # that the flush at exit can't fail again. 141 = 128 + SIGPIPE, the status
        # a shell shows for any program that a closed pipe stops.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
