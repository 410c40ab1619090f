"""The specification of polyfit_sin.py: its fit, its output, its errors, its notebook use."""

import ast
import contextlib
import importlib
import io
import pathlib
import re
import subprocess
import sys
import types
import warnings

import pytest
import torch

import polyfit_sin

SCRIPT = pathlib.Path(polyfit_sin.__file__).resolve()
SOURCE = SCRIPT.read_text(encoding="utf-8")
HAS_CUDA = torch.cuda.is_available()
CUBIC = [0, 1, 2, 3]  # the powers of x in y = a + b x + c x² + d x³
DIVERGED = re.compile(
    r"polyfit_sin\.py: error: the loss diverged at step (\d+): "
    r"the learning rate (\S+) is too large, try a smaller one"
)


def run_main(*args):
    """main(ARGS) here: (exit status, stdout, stderr). A traceback fails the test."""
    out, err, status = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            polyfit_sin.main(list(args))
        except SystemExit as stop:
            status = stop.code
    return status, out.getvalue(), err.getvalue()


def quiet_fit(**kwargs):
    """fit(**kwargs) on the CPU, its printed lines swallowed: a, b, c, d."""
    with contextlib.redirect_stdout(io.StringIO()):
        return polyfit_sin.fit(device="cpu", **kwargs)


def columns(powers):
    """x at the script's 2000 float32 points, in float64, and its powers as columns."""
    x = torch.linspace(-torch.pi, torch.pi, 2000).double()
    return x, torch.stack([x**p for p in powers], dim=1)


def best_fit(powers):
    """The least-squares fit with these powers of x: coefficients, loss, errors."""
    x, X = columns(powers)
    solution = torch.linalg.lstsq(X, torch.sin(x).unsqueeze(1)).solution.squeeze(1)
    error = X @ solution - torch.sin(x)
    return solution.tolist(), (error**2).sum().item(), error


def test_the_default_run_and_its_seed():
    status, out, err = run_main("--device", "cpu")
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "Using cpu device" and len(lines) == 22
    losses = [float(line.split()[1]) for line in lines[1:21]]
    steps = range(99, 2000, 100)  # counted from 0; each loss as Python prints a float
    assert lines[1:21] == [f"{t} {loss!r}" for t, loss in zip(steps, losses)]
    assert losses == sorted(losses, reverse=True)
    assert losses[-1] == pytest.approx(12.28668, rel=1e-5)
    weights = quiet_fit()
    assert lines[21] == "Result: y = {} + {} x + {} x^2 + {} x^3".format(*weights)
    assert weights == pytest.approx([0.05862, 0.83725, -0.01011, -0.09056], abs=1e-5)
    # The same seed, the same numbers, even with float64 as a notebook's default dtype
    torch.set_default_dtype(torch.float64)
    try:
        assert run_main("--device", "cpu") == (status, out, err)
    finally:
        torch.set_default_dtype(torch.float32)
    assert run_main("--device", "cpu", "--seed", "1")[1].splitlines()[1] != lines[1]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_hand_derived_gradients_equal_autograd(seed):
    after_1 = torch.tensor(quiet_fit(steps=1, seed=seed), dtype=torch.float64)
    after_2 = torch.tensor(quiet_fit(steps=2, seed=seed), dtype=torch.float64)
    # The second step moved each weight by -learning_rate * its gradient there
    by_hand = (after_1 - after_2) / 1e-6
    a, b, c, d = (w.clone().requires_grad_() for w in after_1)
    x, _ = columns(CUBIC)
    ((a + b * x + c * x**2 + d * x**3 - torch.sin(x)) ** 2).sum().backward()
    autograd = torch.stack([a.grad, b.grad, c.grad, d.grad])
    assert (autograd.abs() > 1000).all()  # none near zero, so rtol means something
    # float32 rounding of the step leaves at most about 1e-5 of each gradient
    torch.testing.assert_close(by_hand, autograd, rtol=1e-4, atol=0)


BAD_INPUT = {
    "--steps 0": "argument --steps: expected at least 1, got 0",
    "--steps 1e3": "argument --steps: invalid int value: '1e3'",
    "--lr 0": "argument --lr: expected a positive number, got 0.0",
    "--lr=-1e-6": "argument --lr: expected a positive number, got -1e-06",
    "--lr nan": "argument --lr: expected a positive number, got nan",
    "--lr inf": "argument --lr: expected a positive number, got inf",
    "--lr fast": "argument --lr: invalid float value: 'fast'",
    "--seed -1": "argument --seed: expected 0 to 2**64-1, got -1",
    f"--seed {2**64}": f"argument --seed: expected 0 to 2**64-1, got {2**64}",
    "--device gpu": "argument --device: invalid choice: 'gpu' (choose from ",
    "--stpes 10": "unrecognized arguments: --stpes 10",
}
if not HAS_CUDA:  # as the README's troubleshooting quotes it
    BAD_INPUT["--device cuda"] = "argument --device: invalid choice: 'cuda'"


@pytest.mark.parametrize("args", BAD_INPUT)
def test_bad_input_is_a_usage_error_with_status_2(args):
    status, out, err = run_main(*args.split())
    assert (status, out) == (2, "")
    assert err.startswith("usage: polyfit_sin.py ")
    assert err.splitlines()[-1].startswith(f"polyfit_sin.py: error: {BAD_INPUT[args]}")


def test_help_and_the_default_device_that_fit_shares(capsys):
    status, out, _ = run_main("--help")
    assert status == 0 and out.isascii()  # so that any console can print it
    assert all(flag in out for flag in ("--device", "--steps", "--lr", "--seed"))
    assert "the loss diverges above about 3.56e-6" in " ".join(out.split())
    expected = torch.accelerator.current_accelerator().type if HAS_CUDA else "cpu"
    assert f"(default: {expected}, the machine's accelerator" in " ".join(out.split())
    polyfit_sin.fit(steps=1)
    assert capsys.readouterr().out.startswith(f"Using {expected} device\n")


@pytest.mark.parametrize(
    ("learning_rate", "steps", "step"),
    [(1e-3, 2000, 99), (3.5e38, 2000, 99), (1e-3, 5, 5), (3e38, 1, 1), (1e30, 1, 1)],
)
def test_divergence_prints_one_line_and_no_nan(learning_rate, steps, step):
    args = ["--device", "cpu", "--lr", str(learning_rate), "--steps", str(steps)]
    status, out, err = run_main(*args)
    assert (status, out) == (1, "Using cpu device\n")  # no loss line, no Result
    match = DIVERGED.fullmatch(err.rstrip("\n"))
    assert match, err
    assert (int(match[1]), float(match[2])) == (step, learning_rate)
    with pytest.raises(FloatingPointError, match=f"the loss diverged at step {step}:"):
        quiet_fit(learning_rate=learning_rate, steps=steps)


def test_fit_refuses_a_learning_rate_that_is_not_positive():
    for learning_rate in (0, -1e-6, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="expected a positive learning rate, got"):
            polyfit_sin.fit(learning_rate=learning_rate)


def test_a_loss_that_rose_stops_the_run_and_the_error_comes_after_it_in_a_log():
    # 3.56e-6 is just past the stable rate, 3.558e-6: the loss falls, then rises.
    # Run as `python polyfit_sin.py --lr 3.56e-6 > log 2>&1`, one file for both.
    argv = [sys.executable, str(SCRIPT), "--device", "cpu", "--lr", "3.56e-6"]
    done = subprocess.run(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False
    )
    assert done.returncode == 1
    lines = done.stdout.splitlines()  # and no warning, no traceback
    assert lines[:2] == ["Using cpu device", "99 87193.2109375"] and len(lines) == 3
    assert DIVERGED.fullmatch(lines[2])[1] == "199"


@pytest.mark.parametrize(
    ("learning_rate", "seed", "steps"),
    # 3e-6; just below the stable rate; and the run whose converged loss wobbled the
    # most (by 2.2e-7 of itself) of 7 rates from 1e-6 to 3.5579e-6 and seeds 0 to 5
    [(3e-6, 0, 10_000), (3.557e-6, 0, 20_000), (1e-6, 4, 20_050)],
)
def test_converges_to_least_squares_with_no_false_alarm(learning_rate, seed, steps):
    weights = quiet_fit(steps=steps, learning_rate=learning_rate, seed=seed)
    assert weights == pytest.approx(best_fit(CUBIC)[0], abs=1e-4)


def cells(kind):
    """The source of the file's markdown or code cells, split at each `# %%` line."""
    parts = re.split(r"^(# %%.*)\n", SOURCE, flags=re.MULTILINE)
    assert parts[0] == "" and parts[1::2] == ["# %% [markdown]", "# %%"] * 3
    return parts[2::4] if kind == "markdown" else parts[4::4]


def prose():
    """The markdown cells as a notebook shows them: the docstring, then comments."""
    docstring, *comments = (cell.strip() for cell in cells("markdown"))
    assert all(re.fullmatch(r"#( .*)?(\n#( .*)?)*", text) for text in comments)
    comments = [re.sub(r"^# ?", "", text, flags=re.MULTILINE) for text in comments]
    return [ast.literal_eval(docstring).strip(), *comments]


def test_cells_alternate_prose_and_code_with_one_title_and_sections_below_it():
    assert prose()[0] == polyfit_sin.__doc__.strip()  # sphinx-gallery's header
    # A comment right under `# %%` would turn into prose in sphinx-gallery
    assert not any(code.lstrip("\n").startswith("#") for code in cells("code"))
    # `=` first and `-` after: levels 1 and 2 in RST (by order) and in Markdown
    text = "\n\n".join(prose())
    underlined = re.findall(r"^(.+)\n([=~-]{3,})$", text, flags=re.MULTILINE)
    assert [(title, len(line), line[0]) for title, line in underlined] == [
        ("PyTorch: Tensors", 16, "="),
        ("The fit", 7, "-"),
        ("The command line", 16, "-"),
    ]
    # Nothing a notebook shows raw: an RST role, an escape, `x` (italics in RST)
    assert not re.search(r":\w+:`|\\|(?<!`)`[^`]+`(?!`)", text)


def test_jupytext_opens_the_prose_as_markdown_and_the_code_as_code():
    notebook = pytest.importorskip("jupytext").read(SCRIPT)
    assert [cell.cell_type for cell in notebook.cells] == ["markdown", "code"] * 3
    assert [cell.source for cell in notebook.cells[::2]] == prose()


@pytest.mark.parametrize("whole_file", [True, False])
def test_notebook_run_prints_what_the_command_line_prints(monkeypatch, whole_file):
    # A kernel: ipykernel loaded, sys.argv its own flags; a pasted file: no __file__
    monkeypatch.setattr(sys, "argv", ["ipykernel_launcher.py", "-f", "kernel-1.json"])
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    namespace = {"__name__": "__main__"}
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        for cell in [SOURCE] if whole_file else cells("code"):
            exec(compile(cell, "<notebook cell>", "exec"), namespace)  # noqa: S102
    assert printed.getvalue() == run_main()[1]


def test_run_magic_reads_its_flags_and_import_prints_nothing(monkeypatch, capsys):
    # `%run polyfit_sin.py --stpes 10`: ipykernel is loaded, but __file__ is set and
    # sys.argv holds the flags typed
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--stpes", "10"])
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    with pytest.raises(SystemExit) as stop:
        polyfit_sin.main()
    assert stop.value.code == 2
    assert capsys.readouterr().err.endswith("unrecognized arguments: --stpes 10\n")
    importlib.reload(polyfit_sin)
    assert capsys.readouterr() == ("", "")


cuda_only = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


@cuda_only
def test_cuda_fit_matches_the_cpus_takes_an_index_and_waits_only_to_read_the_loss():
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        on_cuda = polyfit_sin.fit()
    assert printed.getvalue().startswith("Using cuda device\n")
    assert on_cuda == pytest.approx(quiet_fit(), rel=1e-4, abs=1e-5)
    status, out, _ = run_main("--device", "cuda:0", "--steps", "100")
    assert (status, out.splitlines()[0]) == (0, "Using cuda:0 device")
    count = torch.cuda.device_count()
    status, _, err = run_main("--device", f"cuda:{count}")
    assert status == 2 and f"invalid choice: 'cuda:{count}'" in err

    def synchronizations(steps):
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with contextlib.redirect_stdout(io.StringIO()):
                    polyfit_sin.fit(steps=steps, device="cuda")
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return len([w for w in caught if "synchroniz" in str(w.message)])

    # It waits for the GPU only to read the loss: 800 more steps, 8 more waits
    assert synchronizations(1000) - synchronizations(200) == 8
