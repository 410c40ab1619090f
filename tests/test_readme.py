"""README.md against the code: each command and block runs, each figure is recomputed."""

import contextlib
import functools
import io
import math
import pathlib
import re
import shlex
import textwrap
import types

import pytest
import torch
from test_polyfit_sin import CUBIC, SOURCE, best_fit, columns, quiet_fit, run_main

import polyfit_sin

README = (pathlib.Path(polyfit_sin.__file__).parent / "README.md").read_text("utf-8")
WORDS = " ".join(README.split())  # the README's text, line breaks aside


def said(*texts):
    for text in texts:
        assert text in WORDS, text


def sci(value, digits=3):
    """A number as the README writes it: 3.56e-6, 3.48e7."""
    return f"{value:.{digits - 1}e}".replace("e-0", "e-").replace("e+0", "e")


def curvatures(powers):  # the eigenvalues, rising, and eigenvectors of the Hessian
    return torch.linalg.eigh(2 * columns(powers)[1].T @ columns(powers)[1])


@functools.cache
def run(command):
    """A README command, run on the CPU: exit status, stdout, [step, loss] per line."""
    status, out, _ = run_main(*shlex.split(command)[2:], "--device", "cpu")
    pairs = [line.split() for line in out.splitlines() if line[:1].isdigit()]
    return status, out, [[step, float(loss)] for step, loss in pairs]


# Each README command: its exit status, the last loss line it quotes (loss to 1e-5)
COMMANDS = {
    "python polyfit_sin.py": (0, "1999 12.286677360534668"),
    "python polyfit_sin.py --lr 3.5e-6": (0, "1999 8.817167282104492"),
    "python polyfit_sin.py --lr 3.56e-6": (1, "99 87193.2109375"),
    "python polyfit_sin.py --lr 3e-6": (0, None),  # see test_why_the_rate_is_so_small…
    "python polyfit_sin.py --steps 6000": (0, "5999 8.817169189453125"),
    "python polyfit_sin.py --seed 1": (0, "1999 9.294828414916992"),
}


@pytest.mark.parametrize("command", COMMANDS)
def test_each_readme_command_prints_what_the_readme_says(command):
    assert set(re.findall(r"python polyfit_sin\.py[^`]*?(?=`)", WORDS)) == set(COMMANDS)
    status, expected = COMMANDS[command]
    assert run(command)[0] == status
    if expected:
        said(expected)
        step, loss = expected.split()
        assert run(command)[2][-1] == [step, pytest.approx(float(loss), rel=1e-5)]


def test_the_sample_output_and_the_code_are_what_the_script_prints():
    sample = re.search(r"prints:\n\n```\n(.*?)```", README, re.DOTALL)[1]
    printed = run("python polyfit_sin.py")[1]
    number = r"-?\d[\d.e-]*"
    assert re.sub(number, "N", sample) == re.sub(number, "N", printed)
    expected = [float(n) for n in re.findall(number, sample)]
    printed_numbers = [float(n) for n in re.findall(number, printed)]
    assert printed_numbers == pytest.approx(expected, rel=1e-5)
    c = quiet_fit()[2]
    said(f"`+ {c:.4f}… x^2` means −{-c:.4f} x²")
    # The code blocks and calls run
    [block] = re.findall(r"```python\n(.*?)```", README, re.DOTALL)  # autograd check
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        exec(textwrap.dedent(block), {})  # noqa: S102
    quoted = re.search(r"`(\S+ \S+)`: the same up to float32 rounding", WORDS)[1]
    numbers = [float(n) for n in printed.getvalue().split()]
    assert numbers == pytest.approx([float(n) for n in quoted.split()], rel=1e-6)
    call = re.search(r"`(polyfit_sin\.fit\(.*?\))`", WORDS)[1]  # the notebook call
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        weights = eval(call, {"polyfit_sin": polyfit_sin})
    assert printed.getvalue().endswith("{} x^2 + {} x^3\n".format(*weights[2:]))


def test_why_the_rate_is_so_small_and_the_default_run_stops_above_the_floor():
    help_text = run("python polyfit_sin.py --help")[1]
    text = " ".join(f"{WORDS} {help_text} {SOURCE}".split())
    stated = re.findall(r"(?:≈|about) (3\.5\d*e-6)", text)
    values, vectors = curvatures(CUBIC)
    flattest, steepest = values[0].item(), values[-1].item()
    assert len(stated) >= 5 and set(stated) == {sci(2 / steepest)}
    k_d = 2 * (columns(CUBIC)[0] ** 6).sum().item()
    assert vectors[:, 0].abs().argmax() == 0  # mostly a
    said(
        f"2 Σ x⁶ ≈ {round(k_d, -3):,.0f}, so lr must stay below about {sci(2 / k_d, 2)}",
        f"largest eigenvalue, {steepest:,.0f}, sets the limit: 2 / {steepest:,.0f} ≈",
        f"{flattest:,.1f} (mostly along a), is {steepest / flattest:.0f} times smaller",
        f"the limit 2000 times larger, about {sci(2000 * 2 / steepest, 2)}",
        f"The limit, 2 / {steepest:,.0f} = {sci(2 / steepest, 5)}, lies between them;",
        "below the start at step 99 (`99 87193.2109375`), above step 99's at step 199, "
        "where the run stops.",
    )
    # Try it, 2: why the default run stops above the floor
    best, floor, _ = best_fit(CUBIC)
    for flags, expected in [("--lr 3e-6", "1099"), ("--steps 6000", "3099")]:
        lines = run(f"python polyfit_sin.py {flags}")[2]
        assert next(t for t, loss in lines if loss < 1.01 * floor) == expected
    assert vectors[:, 1].abs().argmax() == 1  # mostly b
    k_a, k_b = values[:2].tolist()
    left_a, left_b = ((1 - 1e-6 * k) ** 2000 * 100 for k in (k_a, k_b))
    said(
        "is within 1% of the floor by line 1099",
        "`python polyfit_sin.py --steps 6000` is within 1% by line 3099",
        f"(k = {k_a:,.1f} and {k_b:,.0f}, mostly a and b) keep {left_a:.1f}% and "
        f"{left_b:.1f}% of it after 2000 steps, so b is {quiet_fit()[1]:.3f}, "
        f"not {best[1]:.3f}",
    )


def cubic(weights, x):
    a, b, c, d = weights
    return a + b * x + c * x**2 + d * x**3


def test_how_good_is_the_fit():
    best, floor, error = best_fit(CUBIC)
    fitted = quiet_fit()
    for name, weights in [("best cubic", best), ("default run's cubic", fitted)]:
        values = (cubic(weights, k * math.pi / 2) for k in range(-2, 3))
        cells = ("0" if abs(v) < 5e-4 else f"{v:.3f}".replace("-", "−") for v in values)
        said(f"| {name} | " + " | ".join(cells) + " |")
    gap = error.abs().tolist()
    inside = max(gap[i] for i in range(1, 1999) if gap[i - 1] <= gap[i] >= gap[i + 1])
    assert gap[0] == pytest.approx(gap[-1])
    x, _ = columns(CUBIC)
    fitted_gap = (cubic(fitted, x) - torch.sin(x)).abs()
    assert fitted_gap.argmax() == 1999  # at π
    said(
        f"y = {best[1]:.5f} x − {-best[3]:.6f} x³ with loss {floor:.3f}",
        f"off by {gap[0]:.3f} at ±π and {inside:.3f} at its inner bumps",
        f"(loss {(fitted_gap**2).sum():.2f} after its last update) by at most "
        f"{fitted_gap.max():.3f}, at π",
    )
    # The chart: sin(x) in blue, then the default run's cubic, at 25 points on [-π, π]
    chart = re.search(r"```mermaid\n(.*?)```", README, re.DOTALL)[1].splitlines()
    assert '"#1f77b4, #ff7f0e"' in chart[0]  # blue, orange
    assert "sin(x) in blue, the default run's cubic in orange" in chart[2]
    assert 'x-axis "x, from -π to π" -3.14 --> 3.14' in chart[3]
    xs = [-math.pi + i * math.pi / 12 for i in range(25)]
    for line, f in zip(chart[-2:], [math.sin, lambda x: cubic(fitted, x)]):
        numbers = (f"{f(x):.2f}".replace("-0.00", "0.00") for x in xs)
        assert line == "  line [" + ", ".join(numbers) + "]"


def edited(*edits):
    """fit() with the README's edits made: its last two lines, or its error."""
    source = SOURCE
    for pattern, replacement in edits:
        source, count = re.subn(pattern, replacement, source)
        assert count == 1, pattern
    module = types.ModuleType("edited")
    exec(compile(source, "edited polyfit_sin.py", "exec"), module.__dict__)  # noqa: S102

    def fit(**kwargs):
        try:
            with contextlib.redirect_stdout(io.StringIO()) as printed:
                module.fit(device="cpu", **kwargs)
        except FloatingPointError as error:
            return str(error)
        return printed.getvalue().splitlines()[-2:]

    return fit


ADD_X5 = [  # the README's steps, as (pattern, replacement)
    (r"( +)d = (torch\.randn.*\n)", r"\g<0>\1e = \2"),
    (r"( +)x3 = x2 \* x\n", r"\g<0>\1x5 = x3 * x2\n"),
    (r"d \* x3\n", "d * x3 + e * x5\n"),
    (r"( +)grad_d = .*\n", r"\g<0>\1grad_e = (grad_y_pred * x5).sum()\n"),
    (r"( +)d -= .*\n", r"\g<0>\1e -= learning_rate * grad_e\n"),
    (r"d = (.*d\.item\(\))", r"d, e = \1, e.item()"),
    (r"\{d\} x\^3", "{d} x^3 + {e} x^5"),
    (r"return a, b, c, d\n", "return a, b, c, d, e\n"),
]


def test_try_it_a_mean_instead_of_a_sum_and_an_x5_term():
    said("change `grad_y_pred = 2.0 * error` to `grad_y_pred = 2.0 * error / 2000`")
    mean = edited((r"(grad_y_pred = 2.0 \* error)\n", r"\1 / 2000\n"))
    for rate, line in [(2e-3, "1999 12.28667163848877"), (1e-6, "1999 148450.53125")]:
        printed = mean(learning_rate=rate)[0]
        assert printed[:5] == line[:5] == "1999 "
        assert float(printed[5:]) == pytest.approx(float(line[5:]), rel=1e-5)
        said(f"`{line}`")
    start = run("python polyfit_sin.py --lr 1e-50 --steps 100")[2][0][1]
    said(f"(`1999 148450.53125`, from {round(start, -2):,.0f} at the start)")
    last = mean(learning_rate=7e-3)[0]
    assert float(last.split()[1]) == pytest.approx(best_fit(CUBIC)[1], rel=1e-6)
    for rate in (7.2e-3, 0.1):
        assert "diverged at step 99:" in mean(learning_rate=rate)
    steepest = curvatures(CUBIC).eigenvalues[-1].item()
    said(
        "`--lr 7.2e-3` and `--lr 0.1` diverge at step 99.",
        f"The limit is 2000 × {sci(2 / steepest, 4)} ≈ {sci(4000 / steepest, 2)}.",
    )

    _, floor, error = best_fit([*CUBIC, 5])
    flattest, *_, steepest = curvatures([*CUBIC, 5]).eigenvalues.tolist()
    x5 = edited(*ADD_X5)
    for rate in (1e-6, 5.8e-8):
        assert "diverged at step 99:" in x5(learning_rate=rate)
    assert x5(learning_rate=5.7e-8)[1].endswith(" x^5")
    after = [x5(learning_rate=5e-8, steps=n)[0].split()[1] for n in (2000, 20_000)]
    said(
        f"The floor drops from {best_fit(CUBIC)[1]:.3f} to {floor:.4f} (largest gap "
        f"{error.abs().max():.3f}), but `--lr 1e-6` diverges at step 99: the largest "
        f"curvature is {sci(steepest)}, so the limit is 2 / {sci(steepest)} ≈ "
        f"{sci(2 / steepest)} (5.7e-8 runs, 5.8e-8 diverges). The smallest is "
        f"{flattest:.0f}, {round(steepest / flattest, -2):,.0f} times less: at 5e-8 the "
        f"loss is still {float(after[0]):.0f} after 2000 steps, {float(after[1]):.0f} "
        "after 20,000.",
    )
