"""The specification of polyfit_sin.py, and of every run and figure its README quotes."""

import ast
import contextlib
import functools
import io
import math
import os
import pathlib
import re
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "polyfit_sin.py"
SOURCE = SCRIPT.read_text(encoding="utf-8")
README = (SCRIPT.parent / "README.md").read_text(encoding="utf-8")
# The published lesson's last two lines
PUBLISHED = """1999 9.045997619628906
Result: y = 0.009059899486601353 + 0.8446162343025208 x + -0.0015629848930984735 x^2 + -0.0916057676076889 x^3
"""
NUMBER = r"(?<!\^)-?\d[\d.e+-]*"  # not the powers in x^2 and x^3
DIVERGED = "Diverged by step {}: try a learning rate below {}"
CHOOSE_DEVICE = """if torch.accelerator.is_available():
    device = torch.accelerator.current_accelerator().type
"""
X = torch.linspace(-torch.pi, torch.pi, 2000).double()  # the script's points
CUBIC = [0, 1, 2, 3]  # the powers of x in y = a + b x + c x² + d x³


def edit(source, *edits):
    """The source with each (old, new) edit made; each old text occurs exactly once."""
    for old, new in edits:
        assert source.count(old) == 1, old
        source = source.replace(old, new)
    return source


def setting(source, *lines):
    """The source with its named numbers set, as in `steps = 6000`."""
    for line in lines:
        name = line.split(" = ")[0]
        source, count = re.subn(rf"^{name} = .*$", line, source, flags=re.MULTILINE)
        assert count == 1, line
    return source


def on_cpu(source):
    """The docstring's edit: delete the `if` statement that picks an accelerator."""
    return edit(source, (CHOOSE_DEVICE, ""))


def exec_source(source):
    """Run source as one notebook cell: (what it printed, its exit message, its names)."""
    names = {"__name__": "__main__"}
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        try:
            exec(compile(source, "polyfit_sin.py", "exec"), names)  # noqa: S102
        except SystemExit as stop:
            return printed.getvalue(), stop.code, names
    return printed.getvalue(), None, names


@functools.cache
def run(*lines, source=SOURCE):
    """The script on the CPU with these numbers set: (printed, exit message, names)."""
    return exec_source(on_cpu(setting(source, *lines)))


def losses(printed):
    """The loss lines as {step: loss}."""
    lines = re.findall(r"^(\d+) (\S+)$", printed, re.MULTILINE)
    return {int(t): float(loss) for t, loss in lines}


def assert_same_to_rounding(printed, expected, rel):
    """The same text, but for the last digits of each number."""
    assert re.sub(NUMBER, "N", printed) == re.sub(NUMBER, "N", expected)
    numbers = [float(n) for n in re.findall(NUMBER, printed)]
    wanted = [float(n) for n in re.findall(NUMBER, expected)]
    assert numbers == pytest.approx(wanted, rel=rel, abs=rel / 10)


def test_the_command_line_prints_the_lesson_and_a_divergence_in_one_line(tmp_path):
    if torch.accelerator.is_available() and not torch.cuda.is_available():
        pytest.skip("CUDA_VISIBLE_DEVICES can't hide this machine's accelerator")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # on the CPU
    argv = [sys.executable, str(SCRIPT)]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert (done.returncode, done.stderr) == (0, "")
    # The README's sample is the published output, and the run prints it to float32
    # rounding (byte for byte on the CPU it was checked on)
    sample = re.search(r"prints:\n\n```\n(.*?)```", README, re.DOTALL)[1]
    assert sample.startswith("Using cpu device\n") and sample.endswith(PUBLISHED)
    assert list(losses(sample)) == list(range(99, 2000, 100))
    assert_same_to_rounding(done.stdout, sample, rel=1e-5)
    # Pasted whole into a notebook cell, it prints the same
    assert exec_source(on_cpu(SOURCE))[:2] == (done.stdout, None)
    said("to compute on the CPU anyway, delete the ``if`` statement", where=FILE_PROSE)
    # A divergence: one line on stderr, exit status 1, and no traceback
    copy = tmp_path / "polyfit_sin.py"
    copy.write_text(setting(SOURCE, "learning_rate = 1e-3"), encoding="utf-8")
    argv = [sys.executable, str(copy)]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert (done.returncode, done.stdout) == (1, "Using cpu device\n")
    assert done.stderr == DIVERGED.format(99, 1e-3) + "\n"


def best_fit(powers):
    """The float64 least-squares fit with these powers of x: coefficients, loss, errors."""
    columns = torch.stack([X**p for p in powers], dim=1)
    solution = torch.linalg.lstsq(columns, torch.sin(X)[:, None]).solution[:, 0]
    error = columns @ solution - torch.sin(X)
    return solution.tolist(), (error**2).sum().item(), error


def curvatures(powers):
    """The eigenvalues, rising, and eigenvectors of the loss's Hessian, 2 XᵀX."""
    columns = torch.stack([X**p for p in powers], dim=1)
    return torch.linalg.eigh(2 * columns.T @ columns)


@pytest.mark.parametrize("seed", [0, 1, 42])
def test_hand_derived_gradients_equal_autograd(seed):
    _, _, names = run(f"seed = {seed}", "steps = 1")  # the gradients at the start
    torch.manual_seed(seed)
    weights = [torch.randn(()).double().requires_grad_() for _ in "abcd"]
    y_pred = sum(w * X**power for power, w in enumerate(weights))
    ((y_pred - torch.sin(X)) ** 2).sum().backward()
    autograd = torch.stack([w.grad for w in weights])
    by_hand = torch.stack([names[f"grad_{w}"] for w in "abcd"]).double()
    assert (autograd.abs() > 1000).all()  # none near zero, so rtol means something
    torch.testing.assert_close(by_hand, autograd, rtol=1e-5, atol=0)


@pytest.mark.parametrize(
    ("learning_rate", "steps", "step"),
    [("3.7e-6", 2000, 599), ("1e-3", 2000, 99), ("1e-3", 20, 19), ("3e38", 1, 0)],
)
def test_a_divergence_stops_with_one_line_and_no_nan_or_inf(learning_rate, steps, step):
    printed, message, _ = run(f"learning_rate = {learning_rate}", f"steps = {steps}")
    assert message == DIVERGED.format(step, float(learning_rate))
    assert "Result" not in printed and not re.search(r"nan|inf", printed + message)
    climbing = list(losses(printed).values())
    assert climbing == sorted(climbing)  # printed as they climbed


def test_a_loss_that_rises_but_stays_finite_is_printed_as_it_is():
    # Just past the stable limit, 2 / 562,122 = 3.5579e-6, the loss climbs slowly
    printed, exit_message, names = run("learning_rate = 3.56e-6")
    rising = list(losses(printed).values())
    assert exit_message is None and "Result" in printed
    assert rising == sorted(rising) and rising[-1] > 50 * rising[0]
    # Under 100 steps nothing is checked but the Result, here large but finite
    printed, exit_message, names = run("learning_rate = 1e-3", "steps = 5")
    assert exit_message is None and "Result" in printed and abs(names["d"]) > 1e12


def cells():
    """The file's cells, split at each `# %%` line: [(kind, source)]."""
    parts = re.split(r"^# %%( \[markdown\])?\n", SOURCE, flags=re.MULTILINE)
    assert parts[0] == ""
    kinds = ["markdown" if marker else "code" for marker in parts[1::2]]
    return list(zip(kinds, parts[2::2]))


def prose():
    """The markdown cells as a notebook shows them: the docstring, then comments."""
    docstring, *comments = (t.strip() for kind, t in cells() if kind == "markdown")
    assert all(re.fullmatch(r"#( .*)?(\n#( .*)?)*", text) for text in comments)
    comments = [re.sub(r"^# ?", "", text, flags=re.MULTILINE) for text in comments]
    return [ast.literal_eval(docstring).strip(), *comments]


def test_cells_alternate_prose_and_code_and_each_output_shows_under_its_cell():
    assert [kind for kind, _ in cells()] == ["markdown", "code"] * 2 + ["markdown"]
    # A comment right under `# %%` would turn into prose in sphinx-gallery
    assert not any(text.startswith("#") for kind, text in cells() if kind == "code")
    # One title, `=`, and sections under it, `-`: the same levels in RST and Markdown
    text = "\n\n".join(prose())
    underlined = re.findall(r"^(.+)\n([=-]{3,})$", text, flags=re.MULTILINE)
    assert [line[0] for _, line in underlined] == ["=", "-", "-"]
    assert all(len(title) == len(line) for title, line in underlined)
    # Nothing a notebook shows raw: an RST role, an escape, `x` (italics in RST)
    assert not re.search(r":\w+:`|\\|(?<!`)`[^`]+`(?!`)", text)
    # Cell by cell: the device line under the device cell, the rest under the loop's
    names, shown = {"__name__": "__main__"}, []
    for _, text in cells():
        code = on_cpu(text) if CHOOSE_DEVICE in text else text
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            exec(compile(code, "cell", "exec"), names)  # noqa: S102
        shown.append(printed.getvalue())
    device_line, rest = run()[0].split("\n", 1)
    assert shown == ["", device_line + "\n", "", rest, ""]


def test_jupytext_opens_the_prose_as_markdown_and_the_code_as_code():
    notebook = pytest.importorskip("jupytext").read(SCRIPT)
    assert [cell.cell_type for cell in notebook.cells] == [k for k, _ in cells()]
    markdown = [cell.source for cell in notebook.cells if cell.cell_type == "markdown"]
    assert markdown == prose()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_cuda_gpu_the_output_matches_and_it_waits_only_to_print():
    printed, exit_message, _ = exec_source(SOURCE)
    assert exit_message is None and printed.startswith("Using cuda device\n")
    assert_same_to_rounding(printed.split("\n", 1)[1], run()[0].split("\n", 1)[1], 1e-4)

    def waits(steps):
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            exec_source(setting(SOURCE, f"steps = {steps}"))
        torch.cuda.set_sync_debug_mode("default")
        return len([w for w in caught if "synchroniz" in str(w.message)])

    # 800 more steps, 8 more printed losses: one wait for the GPU each, and no other
    assert waits(1000) - waits(200) == 8


# The README and the file's prose: each edit they describe runs, each figure holds
WORDS = " ".join(README.split())  # the README's text, line breaks aside
FILE_PROSE = " ".join(" ".join(prose()).split())
FLOOR = best_fit(CUBIC)[1]
STEEPEST = curvatures(CUBIC).eigenvalues[-1].item()  # the largest curvature


def said(*texts, where=WORDS):
    for text in texts:
        assert text in where, text


def sci(value, digits=3):  # a number as the README writes it: 3.56e-6, 3.4e38
    mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def quoted(line, *settings, source=SOURCE):
    """A `step loss` line the README quotes is the run's, to float32 rounding."""
    said(f"`{line}`")
    printed, _, _ = run(*settings, source=source)
    step, loss = line.split()
    assert losses(printed)[int(step)] == pytest.approx(float(loss), rel=1e-5), line
    return printed


def test_why_the_rate_is_so_small():
    values, vectors = curvatures(CUBIC)
    flattest, steepest = values[0].item(), values[-1].item()
    k_d = 2 * (X**6).sum().item()
    assert vectors[:, 0].abs().argmax() == 0  # mostly a
    said(
        f"2 Σ x⁶ ≈ {round(k_d, -3):,.0f}, so lr must stay below about {sci(2 / k_d, 2)}",
        f"largest eigenvalue, {steepest:,.0f}, sets the limit: 2 / {steepest:,.0f} ≈ "
        f"{sci(2 / steepest)}. Its smallest, {flattest:,.1f} (mostly along a), is "
        f"{steepest / flattest:.0f} times smaller",
        f"the limit 2000 times larger, about {sci(4000 / steepest, 2)}.",
    )
    # The README's way to see them
    pattern = r"add `(X = .*?)` and `(print\(torch.linalg.eigvalsh.*?\))` after `(.*?)`"
    columns, show, anchor = re.search(pattern, WORDS).groups()
    source = edit(SOURCE, (anchor + "\n", f"{anchor}\n{columns}\n{show}\n"))
    shown = re.search(r"tensor\(\[(.*?)\]", exec_source(on_cpu(source))[0], re.DOTALL)
    assert ast.literal_eval(f"[{shown[1]}]") == pytest.approx(values.tolist(), rel=1e-6)
    said(f"below about {sci(2 / steepest)}", "2000 times larger rate", where=FILE_PROSE)


def test_how_good_is_the_fit():
    best, floor, error = best_fit(CUBIC)
    a, b, c, d = (run()[2][w].item() for w in "abcd")
    gap = error.abs()
    run_gap = (a + b * X + c * X**2 + d * X**3 - torch.sin(X)).abs()
    assert run_gap.argmax() == 1999  # at π
    said(
        f"y = {best[1]:.5f} x − {-best[3]:.6f} x³ with loss {floor:.3f}",
        f"It is off by {gap[0]:.3f} at ±π. The run's last loss line says "
        f"{losses(run()[0])[1999]:.3f}, and its Result is off by at most "
        f"{run_gap.max():.3f}, at π: less than the best",
        f"`+ {c:.4f}… x^2` means −{-c:.4f} x²",
    )
    said(
        f"loss ≈ {floor:.2f} and is off by about {gap[0]:.1f} at ±π; this run ends at "
        f"{losses(run()[0])[1999]:.2f}",
        where=FILE_PROSE,
    )
    # The chart: sin(x), then the run's cubic, at 25 points from -π to π
    chart = re.search(r"```mermaid\n(.*?)```", README, re.DOTALL)[1].splitlines()
    points = [-math.pi + i * math.pi / 12 for i in range(25)]
    cubic = lambda t: a + b * t + c * t**2 + d * t**3
    for line, f in zip(chart[-2:], [math.sin, cubic]):
        numbers = (f"{f(t):.2f}".replace("-0.00", "0.00") for t in points)
        assert line == "  line [" + ", ".join(numbers) + "]"


def test_try_it_1_watch_it_diverge():
    said("Change `learning_rate = 1e-6` to `learning_rate = 3.5e-6`, then")
    said("then to `learning_rate = 3.7e-6`. What do the losses do, and why?")
    quoted("1999 8.817167282104492", "learning_rate = 3.5e-6")
    # A larger stable rate reaches the least-squares fit in 2000 steps
    weights = [run("learning_rate = 3.5e-6")[2][w].item() for w in "abcd"]
    assert weights == pytest.approx(best_fit(CUBIC)[0], abs=1e-5)
    quoted("99 53889515520.0", "learning_rate = 3.7e-6")
    printed = quoted("499 2.646820480240457e+37", "learning_rate = 3.7e-6")
    factor = 1 - 3.7e-6 * STEEPEST
    climb = list(losses(printed).values())
    rise = [climb[i + 1] / climb[i] for i in range(len(climb) - 1)]
    assert rise == pytest.approx([factor**200] * 4, rel=1e-4)
    float32_max = torch.finfo(torch.float32).max
    assert climb[-1] * factor**200 > float32_max
    said(
        f"The limit, 2 / {STEEPEST:,.0f} = {sci(2 / STEEPEST, 5)}, lies between them",
        f"1 − 3.7e-6 × {STEEPEST:,.0f} ≈ −{-factor:.5f}. The loss grows with its square: "
        f"each loss line, 100 steps on, is about {-factor:.5f}²⁰⁰ ≈ "
        f"{factor**200 / 1e6:.1f} million times the last",
        f"about {sci(float32_max, 2)}, and the run stops: "
        f"`{run('learning_rate = 3.7e-6')[1]}`",
    )


def test_try_it_2_why_the_run_stops_above_the_floor():
    for setting, line in [("learning_rate = 3e-6", 799), ("steps = 6000", 2299)]:
        close = [
            t for t, loss in losses(run(setting)[0]).items() if loss < 1.01 * FLOOR
        ]
        assert close[0] == line
    said("within 1% of the floor by the line for step 799", "by the line for step 2299")
    said("Change `steps = 2000` to `steps = 6000`")
    quoted("5999 8.817166328430176", "steps = 6000")
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
    pattern = r"Change `(grad_y_pred = .*?)` to `(.*?)`, the gradient of the mean"
    old, new = re.search(pattern, WORDS).groups()
    mean = edit(SOURCE, (old + "\n", new + "\n"))
    printed = quoted("1999 9.045997619628906", "learning_rate = 2e-3", source=mean)
    assert losses(printed) == pytest.approx(losses(run()[0]), rel=1e-6)
    quoted("1999 7868.46533203125", "learning_rate = 1e-6", source=mean)
    at_the_floor = losses(run("learning_rate = 7e-3", source=mean)[0])[1999]
    assert at_the_floor == pytest.approx(FLOOR, rel=1e-6)
    for rate, step in [("7.2e-3", 1699), ("0.1", 99)]:
        message = run(f"learning_rate = {rate}", source=mean)[1]
        assert message.startswith(f"Diverged by step {step}:")
    said(
        "7.2e-3 climbs and stops at step 1699, and 0.1 at step 99",
        f"2000 × {sci(2 / STEEPEST, 4)} ≈ {sci(4000 / STEEPEST, 2)}",
    )


def test_try_it_4_an_x5_term():
    step = re.search(r"\*\*Add an x⁵ term.\*\*(.*?)What happens\?", WORDS)[1]
    x5 = SOURCE
    for new, anchor in re.findall(r"`([^`]+)` after `([^`]+) …`", step):
        pattern = rf"^( *){re.escape(anchor)} .*\n"
        x5, count = re.subn(pattern, rf"\g<0>\g<1>{new}\n", x5, flags=re.MULTILINE)
        assert count == 1, anchor
    said("`e` to the check `(a, b, c, d)`")
    term, result = re.findall(r"`([^`]+)` to the (?:forward pass|Result)", step)
    x5 = edit(
        x5,
        ("+ d * x3\n", f"+ d * x3 {term}\n"),
        ("(a, b, c, d)", "(a, b, c, d, e)"),
        ("{d.item()} x^3", "{d.item()} x^3 " + result),
    )
    assert run(source=x5)[1].startswith("Diverged by step 99:")
    assert run("learning_rate = 5.7e-8", source=x5)[0].endswith(" x^5\n")
    quoted("1999 5.849763842343199e+34", "learning_rate = 5.8e-8", source=x5)
    slow = "learning_rate = 5e-8"
    quoted("1999 306.29901123046875", slow, source=x5)
    quoted("19999 87.39354705810547", slow, "steps = 20000", source=x5)
    _, floor, error = best_fit([*CUBIC, 5])
    flattest, *_, steepest = curvatures([*CUBIC, 5]).eigenvalues.tolist()
    said(
        f"The floor drops from {FLOOR:.3f} to {floor:.4f} (largest gap "
        f"{error.abs().max():.3f}), but 1e-6 now stops at step 99: the largest curvature "
        f"(with `x5` in `X`) is {sci(steepest)}, so the limit is 2 / {sci(steepest)} ≈ {sci(2 / steepest)}",
        f"The smallest is {flattest:.0f}, {round(steepest / flattest, -2):,.0f} times less",
    )


def test_try_it_5_check_a_gradient_against_autograd():
    [block] = re.findall(r"```python\n(.*?)```", README, re.DOTALL)
    printed, _, _ = exec_source(on_cpu(SOURCE) + textwrap.dedent(block))
    pair = printed.splitlines()[-1]
    said(f"`{pair}`: the same")
    by_autograd, by_hand = map(float, pair.split())
    assert by_autograd == by_hand != 0
