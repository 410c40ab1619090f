"""The specification of polyfit_sin.py: its output, gradients, divergence and cells."""

import ast
import contextlib
import functools
import io
import os
import pathlib
import re
import subprocess
import sys
import warnings

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "polyfit_sin.py"
SOURCE = SCRIPT.read_text(encoding="utf-8")
README = (ROOT / "README.md").read_text(encoding="utf-8")
HAS_CUDA = torch.cuda.is_available()
# The published lesson's last loss line and Result
PUBLISHED_LAST_LOSS = "1999 9.045997619628906"
PUBLISHED_RESULT = [
    0.009059899486601353,
    0.8446162343025208,
    -0.0015629848930984735,
    -0.0916057676076889,
]
NUMBER = r"-?\d[\d.e+-]*"
RESULT = re.compile(
    rf"Result: y = ({NUMBER}) \+ ({NUMBER}) x \+ ({NUMBER}) x\^2 \+ ({NUMBER}) x\^3"
)
DIVERGED = "Diverged by step {}: try a learning rate below {}"
CHOOSE_DEVICE = "    device = torch.accelerator.current_accelerator().type\n"


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
    """The edit the docstring tells a learner: device = "cpu" after the lines choosing it."""
    return edit(source, (CHOOSE_DEVICE, CHOOSE_DEVICE + 'device = "cpu"\n'))


def exec_source(source):
    """Run source as one notebook cell: (what it printed, its exit message or None, its names)."""
    names = {"__name__": "__main__"}
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        try:
            exec(compile(source, "polyfit_sin.py", "exec"), names)  # noqa: S102
        except SystemExit as stop:
            return printed.getvalue(), stop.code, names
    return printed.getvalue(), None, names


@functools.cache
def run(*lines, source=SOURCE):
    """The script on the CPU with the named numbers set: (printed, exit message, names)."""
    return exec_source(on_cpu(setting(source, *lines)))


def losses(printed):
    """The loss lines as {step: loss}."""
    lines = re.findall(r"^(\d+) (\S+)$", printed, re.MULTILINE)
    return {int(t): float(loss) for t, loss in lines}


def sample():
    """The README's sample output."""
    return re.search(
        r"`python polyfit_sin.py` prints:\n\n```\n(.*?)```", README, re.DOTALL
    )[1]


def test_the_command_line_prints_the_published_lesson_quietly():
    if torch.accelerator.is_available() and not HAS_CUDA:
        pytest.skip(
            "this machine's accelerator can't be hidden with CUDA_VISIBLE_DEVICES"
        )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, str(SCRIPT)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
    lines = done.stdout.splitlines()
    assert len(lines) == 22 and lines[0] == "Using cpu device"
    # Each loss as Python prints a float, at steps 99, 199, ..., 1999
    assert list(losses(done.stdout)) == list(range(99, 2000, 100))
    assert lines[1:21] == [f"{t} {loss!r}" for t, loss in losses(done.stdout).items()]
    assert RESULT.fullmatch(lines[21])
    # The README's sample is the published lesson's output, and the run prints it to
    # float32 rounding (byte for byte on the CPU the sample was checked on)
    assert PUBLISHED_LAST_LOSS in sample()
    assert [float(n) for n in RESULT.search(sample()).groups()] == PUBLISHED_RESULT
    assert re.sub(NUMBER, "N", done.stdout) == re.sub(NUMBER, "N", sample())
    numbers = [float(n) for n in re.findall(NUMBER, done.stdout)]
    expected = [float(n) for n in re.findall(NUMBER, sample())]
    assert numbers == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # Pasted whole into a notebook cell, it prints the same
    assert exec_source(on_cpu(SOURCE))[:2] == (done.stdout, None)


def best_fit(powers):
    """The float64 least-squares fit at the script's points: coefficients, loss, errors."""
    x = torch.linspace(-torch.pi, torch.pi, 2000).double()
    X = torch.stack([x**p for p in powers], dim=1)
    solution = torch.linalg.lstsq(X, torch.sin(x).unsqueeze(1)).solution.squeeze(1)
    error = X @ solution - torch.sin(x)
    return solution.tolist(), (error**2).sum().item(), error


def test_a_larger_stable_rate_converges_to_least_squares():
    _, exit_message, names = run("learning_rate = 3e-6", "steps = 10000")
    assert exit_message is None
    weights = [names[w].item() for w in "abcd"]
    assert weights == pytest.approx(best_fit([0, 1, 2, 3])[0], abs=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 42])
def test_hand_derived_gradients_equal_autograd(seed):
    _, _, names = run(f"seed = {seed}", "steps = 1")  # the gradients at the start
    torch.manual_seed(seed)
    a, b, c, d = (
        torch.randn((), dtype=torch.float64, requires_grad=True) for _ in "abcd"
    )
    x = names["x"].double()
    ((a + b * x + c * x**2 + d * x**3 - torch.sin(x)) ** 2).sum().backward()
    autograd = torch.stack([a.grad, b.grad, c.grad, d.grad])
    by_hand = torch.stack([names[f"grad_{w}"] for w in "abcd"]).double()
    assert (autograd.abs() > 1000).all()  # none near zero, so rtol means something
    torch.testing.assert_close(by_hand, autograd, rtol=1e-5, atol=0)


@pytest.mark.parametrize(
    ("learning_rate", "steps", "step"),
    [
        ("3.7e-6", 2000, 599),
        ("1e-3", 2000, 99),
        ("1e-3", 20, 19),
        ("1e-2", 10, 9),
        ("3e38", 1, 0),
    ],
)
def test_a_divergence_stops_with_one_line_and_never_prints_nan_or_inf(
    learning_rate, steps, step
):
    printed, exit_message, _ = run(
        f"learning_rate = {learning_rate}", f"steps = {steps}"
    )
    assert exit_message == DIVERGED.format(step, float(learning_rate))
    assert not re.search(r"nan|inf", printed + exit_message)
    assert "Result" not in printed
    climbing = list(losses(printed).values())
    assert climbing == sorted(climbing)  # the losses it printed climbed, as they were


def test_a_loss_that_rises_but_stays_finite_is_printed_as_it_is():
    # Just past the stable limit, 2 / 562,122 = 3.5579e-6: the loss climbs slowly
    printed, exit_message, _ = run("learning_rate = 3.56e-6")
    assert exit_message is None and RESULT.search(printed)
    rising = list(losses(printed).values())
    assert rising == sorted(rising) and rising[-1] > 50 * rising[0]
    # Under 100 steps nothing is checked but the Result, which here is large, not inf
    printed, exit_message, _ = run("learning_rate = 1e-3", "steps = 5")
    assert exit_message is None and abs(float(RESULT.search(printed)[4])) > 1e12


def test_on_the_command_line_a_divergence_is_one_line_on_stderr_and_status_1(tmp_path):
    copy = tmp_path / "polyfit_sin.py"
    copy.write_text(on_cpu(setting(SOURCE, "learning_rate = 1e-3")), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(copy)], capture_output=True, text=True, check=False
    )
    assert (done.returncode, done.stdout) == (1, "Using cpu device\n")
    assert done.stderr == DIVERGED.format(99, 1e-3) + "\n"  # and no traceback


def cells():
    """The file's cells, split at each `# %%` line: [(marker, source)]."""
    parts = re.split(r"^(# %%.*)\n", SOURCE, flags=re.MULTILINE)
    assert parts[0] == ""
    return list(zip(parts[1::2], parts[2::2]))


def prose():
    """The markdown cells as a notebook shows them: the docstring, then comments."""
    docstring, *comments = (
        text.strip() for marker, text in cells() if "markdown" in marker
    )
    assert all(re.fullmatch(r"#( .*)?(\n#( .*)?)*", text) for text in comments)
    comments = [re.sub(r"^# ?", "", text, flags=re.MULTILINE) for text in comments]
    return [ast.literal_eval(docstring).strip(), *comments]


def test_cells_alternate_prose_and_code_and_each_output_shows_under_its_cell():
    assert [marker for marker, _ in cells()] == ["# %% [markdown]", "# %%"] * 2 + [
        "# %% [markdown]"
    ]
    # A comment right under `# %%` would turn into prose in sphinx-gallery
    assert not any(text.startswith("#") for marker, text in cells() if marker == "# %%")
    # One title, `=`, and sections under it, `-`: the same levels in RST and Markdown
    text = "\n\n".join(prose())
    underlined = re.findall(r"^(.+)\n([=-]{3,})$", text, flags=re.MULTILINE)
    assert [(len(title), line[0]) for title, line in underlined] == [
        (len(line), "=" if i == 0 else "-") for i, (_, line) in enumerate(underlined)
    ]
    assert underlined[0][0] == "PyTorch: Tensors" and len(underlined) == 3
    # Nothing a notebook shows raw: an RST role, an escape, `x` (italics in RST)
    assert not re.search(r":\w+:`|\\|(?<!`)`[^`]+`(?!`)", text)
    # Run cell by cell, the device line shows under the first code cell, the rest
    # under the one with the loop
    names = {"__name__": "__main__"}
    shown = []
    for _, text in cells():
        code = on_cpu(text) if CHOOSE_DEVICE in text else text
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            exec(compile(code, "cell", "exec"), names)  # noqa: S102
        shown.append(printed.getvalue())
    assert shown[1] == "Using cpu device\n"
    assert shown[3] == run()[0].removeprefix(shown[1]) and shown[3].count("\n") == 21


def test_jupytext_opens_the_prose_as_markdown_and_the_code_as_code():
    notebook = pytest.importorskip("jupytext").read(SCRIPT)
    kinds = ["markdown" if "markdown" in marker else "code" for marker, _ in cells()]
    assert [cell.cell_type for cell in notebook.cells] == kinds
    assert [
        cell.source for cell in notebook.cells if cell.cell_type == "markdown"
    ] == prose()


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_on_a_cuda_gpu_the_output_matches_and_it_waits_only_to_print():
    printed, exit_message, _ = exec_source(SOURCE)
    assert exit_message is None and printed.startswith("Using cuda device\n")
    printed, cpu_printed = printed.split("\n", 1)[1], run()[0].split("\n", 1)[1]
    assert re.sub(NUMBER, "N", printed) == re.sub(NUMBER, "N", cpu_printed)
    numbers = [float(n) for n in re.findall(NUMBER, printed)]
    expected = [float(n) for n in re.findall(NUMBER, cpu_printed)]
    assert numbers == pytest.approx(expected, rel=1e-4, abs=1e-5)

    def waits(steps):
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                exec_source(setting(SOURCE, f"steps = {steps}"))
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return len([w for w in caught if "synchroniz" in str(w.message)])

    # 800 more steps, 8 more printed losses: one wait for the GPU each, and no other
    assert waits(1000) - waits(200) == 8
