"""README.md, checked against the code: its commands, its code blocks, its figures."""

import contextlib
import importlib.util
import io
import math
import os
import pathlib
import re
import shlex
import subprocess
import sys
import textwrap
import types

import pytest
import torch
from helpers import CUBIC, best_fit, curvatures, grid_columns, run_main

import polyfit_sin

ROOT = pathlib.Path(polyfit_sin.__file__).resolve().parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
SOURCE = (ROOT / "polyfit_sin.py").read_text(encoding="utf-8")


WORDS = " ".join(README.split())  # the README's text, line breaks aside


def code_blocks(language):
    """The README's fenced code blocks in one language, list indentation removed."""
    blocks, body, block_language = [], None, None
    for line in README.splitlines():
        fence = re.fullmatch(r" *```(\w*)", line)
        if fence and body is None:
            block_language, body = fence[1], []
        elif fence:
            if block_language == language:
                blocks.append(textwrap.dedent("\n".join(body)) + "\n")
            body = None
        elif body is not None:
            body.append(line)
    return blocks


def readme_commands():
    return [
        line.strip()
        for block in code_blocks("sh")
        for line in block.splitlines()
        if line.strip()
    ]


def loss_lines(out):
    return [line for line in out.splitlines() if re.fullmatch(r"\d+ \S+", line)]


# The README's shell commands -----------------------------------------------------

# What the README says each `python polyfit_sin.py` command prints: its exit status
# and its last loss line. The digits may differ on other hardware, so the loss is
# compared to 1e-5 of itself; the README must quote the line as given here.
COMMANDS = {
    "python polyfit_sin.py --lr 3.5e-6": (0, "1999 8.817167282104492"),
    "python polyfit_sin.py --lr 3.56e-6": (1, "99 87193.28125"),
    "python polyfit_sin.py --lr 3e-6": (0, "1999 8.817170143127441"),
    "python polyfit_sin.py --steps 6000": (0, "5999 8.817170143127441"),
    "python polyfit_sin.py --seed 1": (0, "1999 9.294828414916992"),
}
# The other commands, and where they are run
RUN_ELSEWHERE = {
    "python polyfit_sin.py": "test_the_sample_output_is_what_the_default_run_prints",
    "python -m venv .venv": ".ci/run installs into its own environment",
    "source .venv/bin/activate": ".ci/run installs into its own environment",
    "pip install -r requirements.txt": ".ci/run",
    "pip install pytest": ".ci/run",
    "python -m pytest": ".ci/run",
    "python tests/bench_vs_original.py": "test_the_benchmark_runs_the_original_lesson",
}


def test_every_readme_command_is_checked():
    assert sorted(readme_commands()) == sorted([*COMMANDS, *RUN_ELSEWHERE])


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_prints_what_the_readme_says(capsys, command):
    status, out, err = run_main(capsys, *shlex.split(command)[2:])
    expected_status, expected_line = COMMANDS[command]
    assert f"`{expected_line}`" in README
    assert status == expected_status, err
    step, loss = loss_lines(out)[-1].split()
    expected_step, expected_loss = expected_line.split()
    assert step == expected_step
    assert float(loss) == pytest.approx(float(expected_loss), rel=1e-5)
    if status == 1:
        assert "the loss diverged at step 199" in err


def test_the_sample_output_is_what_the_default_run_prints(capsys):
    sample = code_blocks("")[0].splitlines()
    status, out, _ = run_main(capsys, "--device", "cpu")
    assert status == 0
    printed = out.splitlines()
    assert sample[0] == printed[0] == "Using cpu device"
    assert len(sample) == len(printed) == 22
    for shown, run in zip(sample[1:], printed[1:]):
        shown_numbers = re.findall(r"-?\d[\d.e-]*", shown)
        run_numbers = re.findall(r"-?\d[\d.e-]*", run)
        assert re.sub(r"-?\d[\d.e-]*", "N", shown) == re.sub(r"-?\d[\d.e-]*", "N", run)
        assert [float(n) for n in run_numbers] == pytest.approx(
            [float(n) for n in shown_numbers], rel=1e-5
        )


def test_the_benchmark_runs_the_original_lesson():
    spec = importlib.util.spec_from_file_location(
        "bench", ROOT / "tests" / "bench_vs_original.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        bench.original()
    lines = printed.getvalue().splitlines()
    assert [int(line.split()[0]) for line in lines[:20]] == list(range(99, 2000, 100))
    assert lines[20].startswith("Result: y = ")
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "bench_vs_original.py"), "--rounds", "1"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(
        r"polyfit_sin\.py is \d+\.\d\dx as fast as the original \(fastest runs\)",
        done.stdout.splitlines()[-1],
    )


def test_the_stable_limit_is_stated_as_one_figure_everywhere(capsys):
    _, help_text, _ = run_main(capsys, "--help")
    text = " ".join([WORDS, *help_text.split(), *SOURCE.split()])
    stated = re.findall(r"(?:≈|about) (3\.5\d*e-6)", text)
    assert len(stated) >= 8
    assert set(stated) == {"3.56e-6"}
    assert f"{2 / curvatures(CUBIC)[-1]:.3g}" == "3.56e-06"


# The README's Python blocks ----------------------------------------------------


@pytest.mark.parametrize("block", code_blocks("python"))
def test_readme_python_block_runs_from_the_repository(block):
    if "matplotlib" in block and importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is not installed")
    done = subprocess.run(
        [sys.executable, "-c", block],
        cwd=ROOT,
        env={**os.environ, "MPLBACKEND": "Agg"},
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    if "d.grad" in block:  # Try it, 6: autograd agrees with the hand-derived rule
        autograd, by_hand = map(float, done.stdout.split())
        assert by_hand == pytest.approx(autograd, rel=1e-6)
        assert autograd == pytest.approx(274831.8125, rel=1e-6)
        assert "It prints `274831.8125 274831.875`" in WORDS


# The README's figures ------------------------------------------------------------


def row(name, values):
    def number(v):
        return "0" if abs(v) < 5e-4 else f"{v:.3f}".replace("-", "−")

    return f"| {name} | " + " | ".join(number(v) for v in values) + " |"


def test_how_good_is_the_fit_table():
    with contextlib.redirect_stdout(io.StringIO()):
        a, b, c, d, loss = polyfit_sin.fit(device="cpu")
    (ba, bb, bc, bd), _, gap = best_fit(CUBIC)
    points = [-math.pi, -math.pi / 2, 0.0, math.pi / 2, math.pi]
    assert (
        row("best cubic", [ba + bb * x + bc * x**2 + bd * x**3 for x in points])
        in README
    )
    fitted = [a + b * x + c * x**2 + d * x**3 for x in points]
    assert row("default run's cubic", fitted) in README
    assert f"(loss {loss:.2f} after the last update)" in WORDS
    assert gap == pytest.approx(0.202, abs=5e-4)
    assert max(abs(v - math.sin(x)) for v, x in zip(fitted, points)) == pytest.approx(
        0.219, abs=5e-4
    )
    x, _ = grid_columns([0])
    y = torch.sin(x)
    rms_best = ((bb * x + bd * x**3 - y) ** 2).mean().sqrt().item()
    rms_fitted = ((a + b * x + c * x**2 + d * x**3 - y) ** 2).mean().sqrt().item()
    assert (round(rms_best, 3), round(rms_fitted, 3)) == (0.066, 0.078)
    assert math.pi**5 / 120 == pytest.approx(2.55, abs=5e-3)


def test_why_the_default_run_stops_at_12_29():
    flattest, b_direction, _, steepest = curvatures(CUBIC)
    assert [round(1e-6 * k * 100, 2) for k in (flattest, b_direction)] == [0.17, 0.21]
    assert [round(3e-6 * k * 100, 2) for k in (flattest, b_direction)] == [0.52, 0.62]
    left = [(1 - 1e-6 * k) ** 2000 * 100 for k in (flattest, b_direction)]
    assert [round(p, 1) for p in left] == [3.1, 1.6]
    assert round(2 / steepest / 1e-6, 1) == 3.6  # the default is 3.6 times below
    # The first printed line within 1% of the floor: 1099 at 3e-6, 3099 at 1e-6
    _, floor, _ = best_fit(CUBIC)
    for learning_rate, steps, expected in [(3e-6, 2000, "1099"), (1e-6, 3200, "3099")]:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            polyfit_sin.fit(steps=steps, learning_rate=learning_rate, device="cpu")
        first = next(
            line
            for line in printed.getvalue().splitlines()
            if float(line.split()[1]) < 1.01 * floor
        )
        assert first.split()[0] == expected


def test_a_converged_float32_loss_lands_a_few_units_from_the_floor():
    _, floor, _ = best_fit(CUBIC)
    assert round(floor, 6) == 8.817167
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        polyfit_sin.fit(steps=5000, learning_rate=3e-6, seed=1, device="cpu")
    last = [float(line.split()[1]) for line in printed.getvalue().splitlines()[-20:]]
    assert all(8.817165 - 1e-6 < loss < 8.817170 + 1e-6 for loss in last)
    assert min(last) < floor  # float32 rounding, not a better cubic


# Try it: the edits -----------------------------------------------------------------


def edited(replacements):
    """polyfit_sin.py with the README's edits made, as a module."""
    source = SOURCE
    for old, new in replacements:
        assert old in source, old
        source = source.replace(old, new)
    module = types.ModuleType("edited")
    exec(compile(source, "edited polyfit_sin.py", "exec"), module.__dict__)  # noqa: S102
    return module


def last_line_or_error(module, **kwargs):
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            module.fit(device="cpu", **kwargs)
    except FloatingPointError as error:
        return str(error)
    return printed.getvalue().splitlines()[-1]


def test_try_a_mean_instead_of_a_sum():
    old, new = "grad_y_pred = 2.0 * error", "grad_y_pred = 2.0 * error / 2000"
    assert f"change `{old}` to `{new}`" in WORDS
    mean = edited([(old + "  #", new + "  #")])
    expected = {
        1e-6: "1999 148450.53125",
        2e-3: "1999 12.286672592163086",
        7e-3: "1999 8.817167282104492",
    }
    for learning_rate, line in expected.items():
        assert f"`{line}`" in README
        step, loss = last_line_or_error(mean, learning_rate=learning_rate).split()
        assert step == "1999"
        assert float(loss) == pytest.approx(float(line.split()[1]), rel=1e-5)
    assert "diverged at step 99" in last_line_or_error(mean, learning_rate=7.2e-3)
    assert 2000 * 2 / curvatures(CUBIC)[-1] == pytest.approx(7.12e-3, abs=5e-6)


D_START = (
    "    d = torch.randn((), generator=generator, dtype=torch.float32).to(device)\n"
)
ADD_X5 = [
    (D_START, D_START + D_START.replace("d =", "e =")),
    ("    x3 = x2 * x\n", "    x3 = x2 * x\n    x5 = x3 * x2\n"),
    ("d * x3", "d * x3 + e * x5"),
    (
        "grad_d = grad_y_pred.dot(x3)  # ∂loss/∂d\n",
        (
            "grad_d = grad_y_pred.dot(x3)  # ∂loss/∂d\n"
            "            grad_e = grad_y_pred.dot(x5)  # ∂loss/∂e\n"
        ),
    ),
    (
        "d.sub_(grad_d, alpha=learning_rate)\n",
        (
            "d.sub_(grad_d, alpha=learning_rate)\n"
            "            e.sub_(grad_e, alpha=learning_rate)\n"
        ),
    ),
    ("d.item(), loss", "d.item(), e.item(), loss"),
    ("a, b, c, d, _ = fit(", "a, b, c, d, e, _ = fit("),
    ('{d} x^3")', '{d} x^3 + {e} x^5")'),
]


def test_try_an_x5_term_the_figures():
    _, floor, gap = best_fit([*CUBIC, 5])
    _, cubic_floor, _ = best_fit(CUBIC)
    assert round(floor, 4) == 0.0372 and round(gap, 3) == 0.016
    assert round(cubic_floor / floor) == 237
    flattest, *_, steepest = curvatures([*CUBIC, 5])
    assert f"{steepest:.3g}" == "3.48e+07" and round(flattest) == 605
    assert f"{2 / steepest:.3g}" == "5.75e-08"
    assert round(steepest / flattest, -2) == 57400


def test_try_an_x5_term_the_runs():
    x5 = edited(ADD_X5)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        x5.main(["--device", "cpu", "--lr", "5.7e-8", "--steps", "100"])
    assert re.fullmatch(
        r"Result: y = .* x\^3 \+ \S+ x\^5", printed.getvalue().split("\n")[-2]
    )
    for learning_rate in (1e-6, 5.8e-8):
        error = last_line_or_error(x5, learning_rate=learning_rate)
        assert "the loss diverged at step 99" in error
    assert last_line_or_error(x5, learning_rate=5.7e-8).startswith("1999 ")
    for steps, loss in [(2000, 2777), (20_000, 296)]:
        line = last_line_or_error(x5, learning_rate=5e-8, steps=steps)
        assert round(float(line.split()[1])) == loss
    line = last_line_or_error(x5, learning_rate=5e-8, steps=200_000)
    assert round(float(line.split()[1]), 3) == 0.041
