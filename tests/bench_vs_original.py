"""Time polyfit_sin.py against the original lesson's code, in one process.

    python tests/bench_vs_original.py [--rounds N]

Both run the default fit (2000 steps, learning rate 1e-6) on the CPU, with their
output swallowed, in turns (original, ours, original, ours, ...) after one warm-up
each. torch is imported once, before any timing, so only the work each one does
is timed. The last line is the original's fastest run divided by ours: above 1
means polyfit_sin.py is faster. The fastest run is the figure least disturbed by
other work on the machine.
"""

import argparse
import contextlib
import io
import pathlib
import statistics
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
import polyfit_sin

# The code of the published "PyTorch: Tensors" lesson, as it is printed there.
ORIGINAL = """
import torch
import math
dtype = torch.float
device = torch.device("cpu")
# device = torch.device("cuda:0") # Uncomment this to run on GPU
# Create random input and output data
x = torch.linspace(-math.pi, math.pi, 2000, device=device, dtype=dtype)
y = torch.sin(x)
# Randomly initialize weights
a = torch.randn((), device=device, dtype=dtype)
b = torch.randn((), device=device, dtype=dtype)
c = torch.randn((), device=device, dtype=dtype)
d = torch.randn((), device=device, dtype=dtype)
learning_rate = 1e-6
for t in range(2000):
    # Forward pass: compute predicted y
    y_pred = a + b * x + c * x ** 2 + d * x ** 3
    # Compute and print loss
    loss = (y_pred - y).pow(2).sum().item()
    if t % 100 == 99:
        print(t, loss)
    # Backprop to compute gradients of a, b, c, d with respect to loss
    grad_y_pred = 2.0 * (y_pred - y)
    grad_a = grad_y_pred.sum()
    grad_b = (grad_y_pred * x).sum()
    grad_c = (grad_y_pred * x ** 2).sum()
    grad_d = (grad_y_pred * x ** 3).sum()
    # Update weights using gradient descent
    a -= learning_rate * grad_a
    b -= learning_rate * grad_b
    c -= learning_rate * grad_c
    d -= learning_rate * grad_d
print(f'Result: y = {a.item()} + {b.item()} x + {c.item()} x^2 + {d.item()} x^3')
"""
ORIGINAL_CODE = compile(ORIGINAL, "original lesson", "exec")


def original():
    exec(ORIGINAL_CODE, {"__name__": "__main__"})  # noqa: S102


def ours():
    polyfit_sin.main(["--device", "cpu"])


def seconds(run):
    with contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        run()
        return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="default: 15")
    rounds = parser.parse_args().rounds
    seconds(original), seconds(ours)  # warm-up
    times = {original: [], ours: []}
    for _ in range(rounds):
        for run, runs in times.items():
            runs.append(seconds(run))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {rounds} rounds"
    )
    for run, name in [(original, "original lesson"), (ours, "polyfit_sin.py ")]:
        runs = times[run]
        print(
            f"{name} fastest {min(runs) * 1e3:6.1f} ms, "
            f"median {statistics.median(runs) * 1e3:6.1f} ms"
        )
    ratio = min(times[original]) / min(times[ours])
    print(f"polyfit_sin.py is {ratio:.2f}x as fast as the original (fastest runs)")


if __name__ == "__main__":
    main()
