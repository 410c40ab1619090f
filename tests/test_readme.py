"""README.md and the file's prose against the script: each edit runs, each figure is recomputed."""

import math
import re
import textwrap

import pytest
import torch
from test_polyfit_sin import (
    README,
    SOURCE,
    best_fit,
    edit,
    exec_source,
    losses,
    on_cpu,
    prose,
    run,
)

WORDS = " ".join(README.split())  # the README's text, line breaks aside
FILE_PROSE = " ".join(" ".join(prose()).split())
CUBIC = [0, 1, 2, 3]
FLOOR = best_fit(CUBIC)[1]


def said(*texts, where=WORDS):
    for text in texts:
        assert text in where, text


def sci(value, digits=3):
    """A number as the README writes it: 3.56e-6, 3.48e7."""
    return (
        f"{value:.{digits - 1}e}".replace("e-0", "e-")
        .replace("e+0", "e")
        .replace("e+", "e")
    )


def curvatures(powers):
    """The Hessian's eigenvalues, rising, and eigenvectors, at the script's points."""
    x = torch.linspace(-torch.pi, torch.pi, 2000).double()
    X = torch.stack([x**p for p in powers], dim=1)
    return torch.linalg.eigh(2 * X.T @ X)


def quoted(printed, *lines):
    """Each `step loss` line the README quotes is the run's, to float32 rounding."""
    for line in lines:
        said(f"`{line}`")
        step, loss = line.split()
        assert losses(printed)[int(step)] == pytest.approx(float(loss), rel=1e-5), line


def last_loss(printed):
    return list(losses(printed).values())[-1]


def test_why_the_rate_is_so_small():
    values, vectors = curvatures(CUBIC)
    flattest, steepest = values[0].item(), values[-1].item()
    x = torch.linspace(-torch.pi, torch.pi, 2000).double()
    k_d = 2 * (x**6).sum().item()
    assert vectors[:, 0].abs().argmax() == 0  # mostly a
    said(
        f"2 Σ x⁶ ≈ {round(k_d, -3):,.0f}, so lr must stay below about {sci(2 / k_d, 2)}",
        f"largest eigenvalue, {steepest:,.0f}, sets the limit: 2 / {steepest:,.0f} ≈ "
        f"{sci(2 / steepest)}. Its smallest, {flattest:,.1f} (mostly along a), is "
        f"{steepest / flattest:.0f} times smaller",
        f"the limit 2000 times larger, about {sci(2000 * 2 / steepest, 2)}.",
    )
    said(f"below about {sci(2 / steepest)}", "2000 times larger rate", where=FILE_PROSE)


def test_how_good_is_the_fit():
    best, floor, error = best_fit(CUBIC)
    _, _, names = run()
    a, b, c, d = (names[w].item() for w in "abcd")
    x = torch.linspace(-torch.pi, torch.pi, 2000).double()
    gap = error.abs()
    bumps = [i for i in range(1, 1999) if gap[i - 1] <= gap[i] >= gap[i + 1]]
    assert [round(x[i].item(), 2) for i in bumps] == [-2.37, -0.87, 0.87, 2.37]
    run_gap = (a + b * x + c * x**2 + d * x**3 - torch.sin(x)).abs()
    assert run_gap.argmax() == 1999  # at π
    said(
        f"y = {best[1]:.5f} x − {-best[3]:.6f} x³ with loss {floor:.3f}",
        f"off by {gap[0]:.3f} at ±π, {gap[bumps[-1]]:.3f} at x ≈ ±2.37 and "
        f"{gap[bumps[-2]]:.3f} at x ≈ ±0.87",
        f"The run's cubic, last loss {last_loss(run()[0]):.3f}, is off by at most "
        f"{run_gap.max():.3f}, at π: less than the best",
        f"`+ {c:.4f}… x^2` means −{-c:.4f} x²",
    )
    said(
        f"loss ≈ {floor:.2f} and is off by about {gap[0]:.1f} at ±π; this run ends at "
        f"{last_loss(run()[0]):.2f}",
        where=FILE_PROSE,
    )
    # The chart: sin(x), then the run's cubic, at 25 points from -π to π
    chart = re.search(r"```mermaid\n(.*?)```", README, re.DOTALL)[1].splitlines()
    points = [-math.pi + i * math.pi / 12 for i in range(25)]
    for line, f in zip(
        chart[-2:], [math.sin, lambda t: a + b * t + c * t**2 + d * t**3]
    ):
        numbers = (f"{f(t):.2f}".replace("-0.00", "0.00") for t in points)
        assert line == "  line [" + ", ".join(numbers) + "]"


def test_try_it_1_watch_it_diverge():
    said(
        "Change `learning_rate = 1e-6` to `learning_rate = 3.5e-6`, then to "
        "`learning_rate = 3.7e-6`"
    )
    quoted(run("learning_rate = 3.5e-6")[0], "1999 8.817167282104492")
    printed, stop, _ = run("learning_rate = 3.7e-6")
    quoted(printed, "99 53889515520.0", "499 2.646820480240457e+37")
    steepest = curvatures(CUBIC).eigenvalues[-1].item()
    factor = 1 - 3.7e-6 * steepest
    climb = list(losses(printed).values())
    rise = [climb[i + 1] / climb[i] for i in range(len(climb) - 1)]
    assert (
        rise == pytest.approx([factor**200] * 4, rel=1e-4)
        and list(losses(printed))[-1] == 499
    )
    assert climb[-1] * factor**200 > torch.finfo(torch.float32).max
    said(
        f"The limit, 2 / {steepest:,.0f} = {sci(2 / steepest, 5)}, lies between them",
        f"1 − 3.7e-6 × {steepest:,.0f} ≈ −{-factor:.2f}, so each loss line is about "
        f"{-factor:.2f}²⁰⁰ ≈ {factor**200 / 1e6:.1f} million times the last",
        f"about {sci(torch.finfo(torch.float32).max, 2)}, so the run stops with "
        f"`{stop}`",
    )


def test_try_it_2_why_the_run_stops_above_the_floor():
    first_close = [
        next(t for t, loss in losses(run(line)[0]).items() if loss < 1.01 * FLOOR)
        for line in ("learning_rate = 3e-6", "steps = 6000")
    ]
    said(
        f"within 1% of the floor by line {first_close[0]}",
        f"within 1% by line {first_close[1]}",
    )
    quoted(run("steps = 6000")[0], "5999 8.817166328430176")
    quoted(run("seed = 0")[0], "1999 12.286677360534668")
    values, vectors = curvatures(CUBIC)
    assert vectors[:, 1].abs().argmax() == 1  # mostly b
    k_a, k_b = values[:2].tolist()
    left_a, left_b = ((1 - 1e-6 * k) ** 2000 * 100 for k in (k_a, k_b))
    said(
        f"(k = {k_a:,.1f} and {k_b:,.0f}, mostly a and b) keep {left_a:.1f}% and "
        f"{left_b:.1f}% of it after 2000 steps, so b is {run()[2]['b'].item():.3f}, "
        f"not {best_fit(CUBIC)[0][1]:.3f}"
    )


def test_try_it_3_a_mean_instead_of_a_sum():
    old, new = re.search(
        r"Change `(grad_y_pred = .*?)` to `(.*?)`, the gradient of the mean", WORDS
    ).groups()
    mean = edit(SOURCE, (old + "\n", new + "\n"))
    quoted(run("learning_rate = 2e-3", source=mean)[0], "1999 9.045997619628906")
    repeat = losses(run("learning_rate = 2e-3", source=mean)[0])
    assert repeat == pytest.approx(losses(run()[0]), rel=1e-6)
    quoted(run("learning_rate = 1e-6", source=mean)[0], "1999 7868.46533203125")
    assert last_loss(run("learning_rate = 7e-3", source=mean)[0]) == pytest.approx(
        FLOOR, rel=1e-6
    )
    for rate, step in [("7.2e-3", 1699), ("0.1", 99)]:
        assert run(f"learning_rate = {rate}", source=mean)[1].startswith(
            f"Diverged by step {step}:"
        )
    said(
        "7.2e-3 climbs and stops at step 1699, and 0.1 at step 99",
        f"2000 × {sci(2 / curvatures(CUBIC).eigenvalues[-1].item(), 4)} ≈ 7.1e-3",
    )


def test_try_it_4_an_x5_term():
    step = re.search(r"4\. \*\*Add an x⁵ term.\*\*(.*?)What happens\?", WORDS)[1]
    snippets = re.findall(r"`([^`]+)`", step)
    _, draw, grad, update, x5, _, term, _, check, result = snippets
    x5_source = edit(
        SOURCE,
        (
            "d = torch.randn(()).to(device)\n",
            f"d = torch.randn(()).to(device)\n{draw}\n",
        ),
        ("x3 = x**3\n", f"x3 = x**3\n{x5}\n"),
        ("c * x2 + d * x3\n", f"c * x2 + d * x3 {term}\n"),
        (
            "(grad_y_pred * x3).sum()  # ∂loss/∂d = Σ 2 error x³\n",
            f"(grad_y_pred * x3).sum()  # ∂loss/∂d = Σ 2 error x³\n    {grad}\n",
        ),
        (
            "d -= learning_rate * grad_d\n",
            f"d -= learning_rate * grad_d\n    {update}\n",
        ),
        (check, check.replace("d)", "d, e)")),
        ("{d.item()} x^3", "{d.item()} x^3 " + result),
    )
    _, floor, error = best_fit([*CUBIC, 5])
    flattest, *_, steepest = curvatures([*CUBIC, 5]).eigenvalues.tolist()
    assert run(source=x5_source)[1].startswith("Diverged by step 99:")
    assert run("learning_rate = 5.7e-8", source=x5_source)[0].endswith(" x^5\n")
    quoted(
        run("learning_rate = 5.8e-8", source=x5_source)[0], "1999 5.849763842343199e+34"
    )
    quoted(run("learning_rate = 5e-8", source=x5_source)[0], "1999 306.29901123046875")
    quoted(
        run("learning_rate = 5e-8", "steps = 20000", source=x5_source)[0],
        "19999 87.39354705810547",
    )
    said(
        f"The floor drops from {FLOOR:.3f} to {floor:.4f} (largest gap "
        f"{error.abs().max():.3f}), but 1e-6 now stops at step 99: the largest curvature "
        f"is {sci(steepest)}, so the limit is 2 / {sci(steepest)} ≈ {sci(2 / steepest)}",
        f"The smallest is {flattest:.0f}, {round(steepest / flattest, -2):,.0f} times less",
    )


def test_try_it_5_check_a_gradient_against_autograd():
    [block] = re.findall(r"```python\n(.*?)```", README, re.DOTALL)
    printed, _, _ = exec_source(on_cpu(SOURCE) + textwrap.dedent(block))
    pair = printed.splitlines()[-1]
    said(f"`{pair}`: the same")
    by_autograd, by_hand = map(float, pair.split())
    assert by_autograd == by_hand != 0
