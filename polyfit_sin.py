# %% [markdown]
"""
PyTorch: Tensors
================

Fit y = a + b x + c x² + d x³ to y = sin(x) on [-π, π] by gradient descent, with
four tensors as the weights and every gradient worked out by hand. You will learn
what a tensor is next to a numpy array, the four parts of a training step, and why
the learning rate has to be so small.

A tensor is an array of numbers much like a numpy array, but it can live on a GPU as
well as on the CPU, and it holds float32 by default, where numpy uses float64. This
file computes on a GPU, or other accelerator, where the installed PyTorch can use
one; to stay on the CPU, delete the ``if`` statement that picks it. Each ``# %%``
line starts a notebook cell.
"""

# %%
import math

import torch

# The CPU, unless PyTorch finds an accelerator it can use (a CUDA GPU, say)
device = "cpu"
if torch.accelerator.is_available():
    device = torch.accelerator.current_accelerator().type
print(f"Using {device} device")

# %% [markdown]
# Gradient descent
# ----------------
#
# ``torch.linalg.lstsq`` would solve this fit exactly, in one call; gradient descent
# is what carries over to models that no formula solves. Each step predicts y at every
# point (the forward pass), measures how far off that is (the loss), works out how the
# loss changes with each weight (the backward pass) and moves each weight a small step
# downhill (the update). The loss sums over 2000 points, so its gradients are large
# and the steps must be small: below 2 / 562,122 ≈ 3.558e-6, or the loss climbs.

# %%
learning_rate = 1e-6
steps = 2000
seed = 42

# 2000 points from -π to π, on the device; x² and x³ never change, so compute them once
x = torch.linspace(-torch.pi, torch.pi, 2000, device=device)
y = torch.sin(x)
x2 = x**2
x3 = x**3

# torch.randn(()) draws a 0-d tensor, one number. Each is drawn on the CPU, then
# copied to the device, so that a seed gives the same start on any device.
torch.manual_seed(seed)
a = torch.randn(()).to(device)
b = torch.randn(()).to(device)
c = torch.randn(()).to(device)
d = torch.randn(()).to(device)

for t in range(steps):
    # Forward pass: the cubic's prediction at every point, and its error there
    y_pred = a + b * x + c * x2 + d * x3
    error = y_pred - y

    # Loss: the squared error, summed, as a tensor. Reading it with .item() waits
    # for a GPU to finish the work queued so far, so it is read only to print it.
    loss = error.pow(2).sum()
    if t % 100 == 99:
        loss_value = loss.item()
        if not math.isfinite(loss_value):  # inf or NaN: stop rather than print it
            raise FloatingPointError(
                f"Diverged by step {t}: learning_rate = {learning_rate} is too large"
            )
        print(t, loss_value)

    # Backward pass, by the chain rule: loss = Σ error² gives ∂loss/∂y_pred = 2 error,
    # and ∂y_pred/∂a = 1, ∂y_pred/∂b = x, ∂y_pred/∂c = x², ∂y_pred/∂d = x³, so:
    grad_y_pred = 2.0 * error
    grad_a = grad_y_pred.sum()  # ∂loss/∂a = Σ 2 error
    grad_b = (grad_y_pred * x).sum()  # ∂loss/∂b = Σ 2 error x
    grad_c = (grad_y_pred * x2).sum()  # ∂loss/∂c = Σ 2 error x²
    grad_d = (grad_y_pred * x3).sum()  # ∂loss/∂d = Σ 2 error x³

    # Update: each weight moves against its gradient, scaled by the learning rate
    a -= learning_rate * grad_a
    b -= learning_rate * grad_b
    c -= learning_rate * grad_c
    d -= learning_rate * grad_d

# Read each weight once, and check it too: a run of under 100 steps prints no loss
fitted = [a.item(), b.item(), c.item(), d.item()]
if not all(math.isfinite(w) for w in fitted):
    raise FloatingPointError(
        f"Diverged by step {t}: learning_rate = {learning_rate} is too large"
    )
print("Result: y = {} + {} x + {} x^2 + {} x^3".format(*fitted))

# %% [markdown]
# What the run shows
# ------------------
#
# No cubic matches sin(x). The best, by least squares, has loss ≈ 8.82 and is off by
# about 0.2 at ±π; this run's last printed loss is 9.05. The line ``loss = …`` only
# reports: the backward pass is derived by hand from Σ error², so changing it alone
# changes the printout, not the fit. The next lesson, on autograd, derives the
# gradients from whatever loss is written, with one call: ``loss.backward()``.
