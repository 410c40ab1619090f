"""The specification of polyfit_sin.py: its fit, its output, its errors, its notebook use."""

import ast
import contextlib
import importlib
import io
import math
import os
import pathlib
import re
import subprocess
import sys
import types
import warnings

import pytest
import torch
from helpers import CUBIC, best_fit, curvatures, grid_columns, run_main

import polyfit_sin

SCRIPT = pathlib.Path(polyfit_sin.__file__).resolve()
SOURCE = SCRIPT.read_text(encoding="utf-8")
HAS_CUDA = torch.cuda.is_available()
DEFAULT_DEVICE = "cuda" if HAS_CUDA else "cpu"
DIVERGED = re.compile(
    r"^polyfit_sin\.py: error: the loss diverged at step (\d+) .*"
    r"the learning rate (\S+) is too large, try a smaller one$"
)


def quiet_fit(**kwargs):
    """polyfit_sin.fit with its loss lines swallowed."""
    with contextlib.redirect_stdout(io.StringIO()):
        return polyfit_sin.fit(**kwargs)


def run_script(*args):
    """Run `python polyfit_sin.py ARGS` and return (exit status, stdout, stderr)."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout, done.stderr


@pytest.fixture(scope="module")
def default_run():
    """`python polyfit_sin.py`, run once for the tests that read its output."""
    return run_script()


# The fit --------------------------------------------------------------------


def test_curvatures_and_the_stable_learning_rate():
    flattest, _, _, steepest = curvatures(CUBIC)
    assert curvatures(CUBIC) == pytest.approx([1727.5, 2066.0, 80356, 562122], rel=1e-4)
    assert steepest / flattest == pytest.approx(325, abs=0.5)
    # Steps stay stable below 2 / steepest; they overshoot from 1 / steepest on
    assert 2 / steepest == pytest.approx(3.558e-6, rel=1e-4)
    assert f"{2 / steepest:.3g}" == "3.56e-06"
    assert 1 / steepest == pytest.approx(1.78e-6, rel=1e-3)
    # The steepest curvature is close to 2 Σ x⁶, so it grows with the number of
    # points: with a mean instead of a sum, every curvature is 2000 times smaller.
    two_sum_x6 = 2 * (grid_columns(CUBIC)[0] ** 6).sum().item()
    assert two_sum_x6 == pytest.approx(551015, rel=1e-5)
    assert 2 / (steepest / 2000) == pytest.approx(7.1e-3, rel=0.005)


def test_least_squares_floor_is_8_817():
    (a, b, c, d), floor, _ = best_fit(CUBIC)
    assert floor == pytest.approx(8.8172, abs=1e-4)
    assert b == pytest.approx(0.85674, abs=1e-5)
    assert d == pytest.approx(-0.093330, abs=1e-6)
    assert abs(a) < 1e-9 and abs(c) < 1e-9


def test_default_fit_lands_between_the_floor_and_17():
    a, b, c, d, loss = quiet_fit()
    _, floor, _ = best_fit(CUBIC)
    assert floor < loss < 17
    assert b == pytest.approx(0.8567, abs=0.06)
    assert d == pytest.approx(-0.0933, abs=0.012)
    assert abs(a) < 0.1
    assert abs(c) < 0.02


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_hand_derived_gradients_equal_autograd(seed):
    start = quiet_fit(steps=0, seed=seed)[:4]
    learning_rate = 1e-6
    after_one_step = quiet_fit(steps=1, learning_rate=learning_rate, seed=seed)[:4]
    # One gradient descent step moved each weight by -learning_rate * gradient.
    hand = (
        torch.tensor(start, dtype=torch.float64)
        - torch.tensor(after_one_step, dtype=torch.float64)
    ) / learning_rate

    a, b, c, d = (
        torch.tensor(w, dtype=torch.float64, requires_grad=True) for w in start
    )
    x = torch.linspace(-torch.pi, torch.pi, 2000).double()
    loss = ((a + b * x + c * x**2 + d * x**3 - torch.sin(x)) ** 2).sum()
    loss.backward()
    autograd = torch.stack([a.grad, b.grad, c.grad, d.grad])

    assert (
        autograd.abs() > 1000
    ).all()  # no gradient is near zero, so rtol means something
    # Each gradient to 1e-4 of itself: float32 rounding of the step leaves about 5e-6.
    torch.testing.assert_close(hand, autograd, rtol=1e-4, atol=0)


def test_larger_learning_rate_converges_to_least_squares():
    a, b, c, d, loss = quiet_fit(steps=10_000, learning_rate=3e-6)
    expected, floor, _ = best_fit(CUBIC)
    assert [a, b, c, d] == pytest.approx(expected, abs=1e-3)
    assert loss == pytest.approx(floor, rel=1e-5)


def test_loss_is_printed_every_100_steps_and_falls(capsys):
    polyfit_sin.fit(steps=1000)
    lines = capsys.readouterr().out.splitlines()
    steps = [int(line.split()[0]) for line in lines]
    losses = [float(line.split()[1]) for line in lines]
    assert steps == list(range(99, 1000, 100))
    assert losses == sorted(losses, reverse=True)


def test_same_seed_same_numbers_other_seed_other_start(capsys):
    seed_0 = run_main(capsys, "--device", "cpu", "--steps", "300")
    assert run_main(capsys, "--device", "cpu", "--steps", "300") == seed_0
    start_0 = quiet_fit(steps=0, seed=0)
    assert quiet_fit(steps=0, seed=0) == start_0
    assert quiet_fit(steps=0, seed=1)[:4] != start_0[:4]
    _, seed_1, _ = run_main(capsys, "--device", "cpu", "--steps", "300", "--seed", "1")
    assert seed_0[1].splitlines()[1] != seed_1.splitlines()[1]


def test_fit_leaves_the_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    quiet_fit(steps=10)
    assert torch.equal(torch.rand(3), expected)


# The command line -------------------------------------------------------------


def test_default_run_prints_the_lessons_format(default_run):
    status, out, err = default_run
    assert status == 0
    assert "Traceback" not in err
    lines = out.splitlines()
    assert lines[0] == f"Using {DEFAULT_DEVICE} device"
    assert len(lines) == 1 + 20 + 1
    for t, line in zip(range(99, 2000, 100), lines[1:21]):
        step, loss = line.split(" ")
        assert step == str(t)
        assert loss == repr(float(loss))  # Python's full-precision float
        assert 8.8 < float(loss) < 1e6
    number = r"(\S+)"
    result = re.fullmatch(
        rf"Result: y = {number} \+ {number} x \+ {number} x\^2 \+ {number} x\^3",
        lines[21],
    )
    assert result, lines[21]
    assert all(v == repr(float(v)) for v in result.groups())
    # The command line prints exactly what fit() prints and returns
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        a, b, c, d, _ = polyfit_sin.fit(device=DEFAULT_DEVICE)
    assert lines[1:21] == printed.getvalue().splitlines()
    assert lines[21] == f"Result: y = {a} + {b} x + {c} x^2 + {d} x^3"


def test_fewer_than_100_steps_print_only_the_result(capsys):
    status, out, _ = run_main(capsys, "--device", "cpu", "--steps", "99")
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == "Using cpu device"
    assert len(lines) == 2
    assert lines[1].startswith("Result: y = ")


def test_flags_change_the_run(capsys):
    status, out, _ = run_main(
        capsys, "--device", "cpu", "--steps", "200", "--lr", "2e-6", "--seed", "7"
    )
    a, b, c, d, _ = quiet_fit(steps=200, learning_rate=2e-6, seed=7)
    assert status == 0
    assert [line.split()[0] for line in out.splitlines()[1:3]] == ["99", "199"]
    assert out.splitlines()[-1] == f"Result: y = {a} + {b} x + {c} x^2 + {d} x^3"


# Bad input ------------------------------------------------------------------

BAD_VALUES = [
    (["--steps", "0"], "argument --steps: expected at least 1, got 0"),
    (["--steps", "-5"], "argument --steps: expected at least 1, got -5"),
    (["--steps", "1e3"], "argument --steps: invalid int value: '1e3'"),
    (["--steps", "many"], "argument --steps: invalid int value: 'many'"),
    (
        ["--lr", "0"],
        "argument --lr: expected a positive number (at most 3.4e38), got 0.0",
    ),
    (
        ["--lr=-1e-6"],
        "argument --lr: expected a positive number (at most 3.4e38), got -1e-06",
    ),
    (
        ["--lr", "nan"],
        "argument --lr: expected a positive number (at most 3.4e38), got nan",
    ),
    (
        ["--lr", "inf"],
        "argument --lr: expected a positive number (at most 3.4e38), got inf",
    ),
    (["--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
    (
        ["--lr", "3.5e38"],
        "argument --lr: expected a positive number (at most 3.4e38), got 3.5e+38",
    ),
    (["--seed", "-1"], "argument --seed: expected 0 to 2**64-1, got -1"),
    (
        ["--seed", str(2**64)],
        f"argument --seed: expected 0 to 2**64-1, got {2**64}",
    ),
    (["--seed", "lucky"], "argument --seed: invalid int value: 'lucky'"),
    (
        ["--device", "gpu"],
        "argument --device: 'gpu' is not a device on this machine (available: auto, cpu",
    ),
    (
        ["--device", "cuda:99"],
        "argument --device: 'cuda:99' is not a device on this machine (available: auto, cpu",
    ),
    (
        ["--device", "meta"],
        "argument --device: 'meta' is not a device on this machine (available: auto, cpu",
    ),
    (["--stpes", "10"], "unrecognized arguments: --stpes 10"),
    (["--lr"], "argument --lr: expected one argument"),
]


@pytest.mark.parametrize(
    ("args", "message"), BAD_VALUES, ids=[" ".join(args) for args, _ in BAD_VALUES]
)
def test_bad_input_is_a_usage_error_with_status_2(capsys, args, message):
    status, out, err = run_main(capsys, *args)
    assert status == 2
    assert out == ""
    assert err.startswith("usage: polyfit_sin.py ")
    assert err.splitlines()[-1].startswith(f"polyfit_sin.py: error: {message}")


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA")
def test_cuda_without_cuda_names_what_is_available(capsys):
    status, _, err = run_main(capsys, "--device", "cuda")
    assert status == 2
    assert err.splitlines()[-1] == (
        "polyfit_sin.py: error: argument --device: 'cuda' is not a device on this machine (available: auto, cpu)"
    )


@pytest.mark.parametrize(
    ("lr", "step"), [("1e-3", 99), ("4e-6", 99), ("1e-3 --steps 5", 4)]
)
def test_divergence_stops_with_status_1_and_prints_no_nan(capsys, lr, step):
    status, out, err = run_main(capsys, "--device", "cpu", "--lr", *lr.split())
    assert status == 1
    assert out == "Using cpu device\n"  # no loss line, no nan, no Result
    assert len(err.splitlines()) == 1
    assert "nan" not in err and "inf" not in err
    diverged = DIVERGED.match(err.splitlines()[0])
    assert diverged, err
    assert int(diverged[1]) == step
    assert float(diverged[2]) == float(lr.split()[0])


def test_divergence_after_printed_losses_stops_at_the_first_rise(capsys):
    # 3.56e-6 is just past the stable limit (2 / largest eigenvalue of the loss's
    # Hessian, 3.558e-6): the loss falls at first, then rises.
    status, out, err = run_main(capsys, "--device", "cpu", "--lr", "3.56e-6")
    lines = out.splitlines()
    assert status == 1
    assert len(lines) == 2 and lines[1].startswith("99 ")
    assert DIVERGED.match(err)[1] == "199"


def test_a_hair_above_the_stable_limit_still_stops(capsys):
    # 3.55795e-6 is 1e-6 of itself above 2 / 562122 = 3.557946e-6: the loss rises
    # by about 0.01% a check once the growing part of the error shows.
    status, out, err = run_main(
        capsys, "--device", "cpu", "--lr", "3.55795e-6", "--steps", "20000"
    )
    assert status == 1
    assert DIVERGED.match(err)[1] == "499"
    assert out.splitlines()[-1].startswith("399 ")


def test_an_unstable_run_stops_once_its_loss_rises_even_between_printed_lines(capsys):
    # At 3.6e-6 the loss falls for 5 steps, then rises every step. The check at
    # the end compares the loss after the last update with the last step's.
    status, out, err = run_main(
        capsys, "--device", "cpu", "--lr", "3.6e-6", "--steps", "6"
    )
    assert status == 1
    assert out == "Using cpu device\n"
    assert DIVERGED.match(err)[1] == "6"
    # The documented limit of the check: after 5 steps the loss is still falling.
    status, out, err = run_main(
        capsys, "--device", "cpu", "--lr", "3.6e-6", "--steps", "5"
    )
    assert status == 0
    assert out.splitlines()[1].startswith("Result: y = 1.74619")
    assert err == ""


@pytest.mark.parametrize("learning_rate", [3.55e-6, 3.557e-6])
def test_just_below_the_stable_limit_converges_without_a_false_alarm(learning_rate):
    a, b, c, d, loss = quiet_fit(steps=20_000, learning_rate=learning_rate)
    expected, floor, _ = best_fit(CUBIC)
    assert [a, b, c, d] == pytest.approx(expected, abs=1e-3)
    assert loss == pytest.approx(floor, rel=1e-5)


@pytest.mark.parametrize("learning_rate", [0, -1e-6, math.nan, 3.5e38])
def test_fit_refuses_a_learning_rate_that_is_not_positive(learning_rate):
    with pytest.raises(
        ValueError, match="the learning rate must be positive, at most 3.4e38, got"
    ):
        quiet_fit(learning_rate=learning_rate)


def test_fit_raises_on_divergence():
    with pytest.raises(FloatingPointError, match="the loss diverged at step 99"):
        quiet_fit(learning_rate=1e-3)


@pytest.mark.parametrize(
    ("args", "status", "last_line"),
    [
        (
            ["--device", "gpu"],
            2,
            "polyfit_sin.py: error: argument --device: 'gpu' is not a device on this machine",
        ),
        (
            ["--stpes", "10"],
            2,
            "polyfit_sin.py: error: unrecognized arguments: --stpes 10",
        ),
        (
            ["--lr", "1e-3", "--device", "cpu"],
            1,
            "polyfit_sin.py: error: the loss diverged at step 99",
        ),
    ],
)
def test_errors_from_the_command_line_have_no_traceback(args, status, last_line):
    code, out, err = run_script(*args)
    assert code == status
    assert "nan" not in out and "Result" not in out
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith(last_line)


def test_old_torch_without_accelerator_gets_one_clear_line(capsys, monkeypatch):
    monkeypatch.delattr(torch, "accelerator", raising=False)
    with pytest.raises(SystemExit) as stop:
        polyfit_sin.main([])
    # sys.exit(message) prints the message on stderr and exits with status 1
    assert stop.value.code.startswith("polyfit_sin.py needs torch 2.6 or newer")
    assert capsys.readouterr().out == ""


def test_help_names_every_flag_and_the_exit_statuses(capsys):
    status, out, _ = run_main(capsys, "--help")
    assert status == 0
    for flag in ("--device", "--steps", "--lr", "--seed"):
        assert flag in out
    help_text = " ".join(out.split())
    assert "Exit status: 0 on success, 1 if the loss diverges" in help_text
    assert "141 if the output's reader closes while it still writes" in help_text
    # The stable limit, as test_curvatures_and_the_stable_learning_rate computes it
    assert "diverges above 2 / (its largest curvature), about 3.56e-6" in help_text
    assert out.isascii()  # so that any console can print it
    assert "on the same machine and PyTorch" in help_text


def head_3(steps, buffered):
    """`python polyfit_sin.py --steps STEPS | head -3`: (exit status, lines, stderr)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--steps", steps],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines = [process.stdout.readline() for _ in range(3)]
    process.stdout.close()  # as head does once it has its lines
    err = process.stderr.read()
    process.stderr.close()
    return process.wait(timeout=120), lines, err


@pytest.mark.parametrize("buffered", [False, True])
def test_a_closed_pipe_ends_quietly_with_status_141(buffered):
    status, lines, err = head_3("200000", buffered)
    assert lines[0] == "Using cpu device\n" and lines[2].startswith("199 ")
    assert status == 141
    assert "Traceback" not in err and "BrokenPipeError" not in err


def test_a_short_buffered_run_is_written_whole_before_head_closes():
    # Python writes to a pipe in blocks of 8 KB: the 22 lines go in one write at
    # the end, so the script never sees the pipe close.
    status, lines, err = head_3("2000", buffered=True)
    assert lines[1].startswith("99 3238.30")
    assert status == 0
    assert "Traceback" not in err


# Import and notebook use ----------------------------------------------------------

KERNEL_ARGV = [
    "/usr/lib/python3/site-packages/ipykernel_launcher.py",
    "-f",
    "/root/.local/share/jupyter/runtime/kernel-1a2b.json",
]


def test_import_prints_nothing_and_trains_nothing(capsys):
    importlib.reload(polyfit_sin)
    assert capsys.readouterr() == ("", "")


def run_in_kernel(cells, namespace):
    """Run source cells in order in one namespace, as a Jupyter kernel does."""
    for cell in cells:
        exec(compile(cell, "<notebook cell>", "exec"), namespace)  # noqa: S102


def cells():
    """The file's cells as (marker, source) pairs, split at each `# %%` line."""
    parts = re.split(r"^(# %%.*)\n", SOURCE, flags=re.MULTILINE)
    assert parts[0] == ""  # the file starts with a cell marker
    return list(zip(parts[1::2], parts[2::2]))


def code_cells():
    return [source for marker, source in cells() if marker == "# %%"]


def markdown_cells():
    """The prose of the markdown cells, as a notebook shows it."""
    texts = []
    for marker, source in cells():
        if marker == "# %% [markdown]":
            source = source.strip()
            if source.startswith('"""'):  # the docstring
                texts.append(ast.literal_eval(source).strip())
            else:
                lines = source.splitlines()
                assert all(line == "#" or line.startswith("# ") for line in lines)
                texts.append("\n".join(line[2:] for line in lines))
    return texts


def test_cells_alternate_markdown_prose_and_code():
    assert [marker for marker, _ in cells()] == ["# %% [markdown]", "# %%"] * 3
    # The first markdown cell is the module docstring, sphinx-gallery's header
    assert markdown_cells()[0] == polyfit_sin.__doc__.strip()
    # A comment right under `# %%` would turn into prose in sphinx-gallery
    assert not any(source.lstrip("\n").startswith("#") for source in code_cells())


def test_one_title_and_the_sections_one_level_below_it():
    headings = []
    for text in markdown_cells():
        lines = text.splitlines()
        for i, line in enumerate(lines[1:]):
            above = lines[i]
            if above.strip() and len(line) >= 3 and len(set(line)) == 1:
                # `~~~` would open a code fence in Jupytext
                assert line[0] in "=-", line
                assert len(line) == len(above), above
                headings.append((above, line[0]))
    # `=` first and `-` after: levels 1 and 2 in RST (by order) and in Markdown
    assert headings == [
        ("PyTorch: Tensors", "="),
        ("The fit", "-"),
        ("The command line", "-"),
    ]


def test_prose_has_no_markup_that_a_notebook_shows_raw():
    for text in markdown_cells():
        assert not re.search(r":\w+:`", text)  # an RST role such as :math:
        assert "\\" not in text  # an escape
        # `x` is code in Markdown but italics in RST; ``x`` is code in both
        assert not re.search(r"(?<!`)`[^`]+`(?!`)", text), text
        assert "```" not in text and "~~~" not in text


def test_jupytext_opens_prose_as_markdown_and_code_as_code():
    jupytext = pytest.importorskip("jupytext")
    notebook = jupytext.read(SCRIPT)
    kinds = [cell.cell_type for cell in notebook.cells]
    assert kinds == ["markdown", "code"] * 3
    shown = [cell.source for cell in notebook.cells if cell.cell_type == "markdown"]
    assert shown == markdown_cells()
    assert [cell.source for cell in notebook.cells if cell.cell_type == "code"] == [
        source.strip() for source in code_cells()
    ]


def test_sphinx_gallery_reads_the_docstring_and_the_prose_as_text():
    parser = pytest.importorskip("sphinx_gallery.py_source_parser")
    _, blocks = parser.split_code_and_text_blocks(str(SCRIPT))
    assert [block.type for block in blocks] == ["text", "code"] * 3
    texts = [block.content.strip() for block in blocks if block.type == "text"]
    assert texts == markdown_cells()


@pytest.mark.parametrize("how", ["whole file in one cell", "cell by cell"])
def test_notebook_run_prints_what_the_command_line_prints(
    monkeypatch, default_run, how
):
    # A Jupyter kernel: __name__ is "__main__", there is no __file__, ipykernel is
    # loaded, and sys.argv holds the kernel's own flags.
    monkeypatch.setattr(sys, "argv", KERNEL_ARGV)
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    # A notebook runs its code cells; its markdown cells are only shown
    cells = [SOURCE] if how == "whole file in one cell" else code_cells()
    namespace = {"__name__": "__main__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        run_in_kernel(cells, namespace)  # a SystemExit here fails the test
    assert out.getvalue() == default_run[1]


def test_run_magic_in_a_notebook_still_reads_its_flags(monkeypatch, capsys):
    # `%run polyfit_sin.py --stpes 10`: the kernel is loaded, but __file__ is set
    # and sys.argv holds the flags the user typed, so a typo is still an error.
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--stpes", "10"])
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    namespace = {"__name__": "__main__", "__file__": str(SCRIPT)}
    with pytest.raises(SystemExit) as stop:
        run_in_kernel([SOURCE], namespace)
    assert stop.value.code == 2
    assert (
        capsys.readouterr().err.splitlines()[-1]
        == "polyfit_sin.py: error: unrecognized arguments: --stpes 10"
    )


# CUDA (skipped where there is none) ---------------------------------------------------

cuda_only = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


@cuda_only
def test_cuda_fit_matches_cpu_fit():
    on_cpu = quiet_fit(device="cpu")
    on_cuda = quiet_fit(device="cuda")
    assert on_cuda == pytest.approx(on_cpu, rel=1e-4, abs=1e-5)


@cuda_only
def test_cuda_devices_by_index(capsys):
    count = torch.cuda.device_count()
    status, out, _ = run_main(capsys, "--device", "cuda:0", "--steps", "100")
    assert status == 0
    assert out.splitlines()[0] == "Using cuda:0 device"
    status, _, err = run_main(capsys, "--device", f"cuda:{count}")
    assert status == 2
    assert (
        f"'cuda:{count}' is not a device on this machine (available: auto, cpu, cuda, cuda:0"
        in err
    )


@cuda_only
def test_cuda_loop_waits_for_the_gpu_only_when_it_prints():
    def synchronizations(steps):
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                quiet_fit(steps=steps, device="cuda")
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return len([w for w in caught if "synchroniz" in str(w.message)])

    # 800 more steps, 8 more printed losses: 8 more waits, not 800
    assert synchronizations(1000) - synchronizations(200) == 8


def test_fit_is_float32_even_if_a_notebook_changed_the_default_dtype():
    expected = quiet_fit(steps=300)
    torch.set_default_dtype(torch.float64)
    try:
        assert quiet_fit(steps=300) == expected
    finally:
        torch.set_default_dtype(torch.float32)
