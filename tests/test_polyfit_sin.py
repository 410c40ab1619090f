"""The specification of polyfit_sin.py: its fit, its output, its errors, its notebook use."""

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


def run_main(capsys, *args):
    """Run polyfit_sin.main(ARGS) in this process; return (exit status, stdout, stderr).

    Anything but a normal return or SystemExit (a traceback, to a user) fails the test.
    """
    try:
        polyfit_sin.main(list(args))
        status = 0
    except SystemExit as stop:
        status = stop.code
    out, err = capsys.readouterr()
    return status, out, err


def least_squares():
    """The best cubic on the script's float32 grid, solved in closed form in float64."""
    x = torch.linspace(-torch.pi, torch.pi, 2000).double()
    y = torch.sin(x)
    columns = torch.stack([torch.ones_like(x), x, x**2, x**3], dim=1)
    solution = torch.linalg.lstsq(columns, y.unsqueeze(1)).solution.squeeze(1)
    floor = ((columns @ solution - y) ** 2).sum().item()
    return solution.tolist(), floor


@pytest.fixture(scope="module")
def default_run():
    """`python polyfit_sin.py`, run once for the tests that read its output."""
    return run_script()


# The fit --------------------------------------------------------------------


def test_least_squares_floor_is_8_817():
    (a, b, c, d), floor = least_squares()
    assert floor == pytest.approx(8.8172, abs=1e-4)
    assert b == pytest.approx(0.85674, abs=1e-5)
    assert d == pytest.approx(-0.093330, abs=1e-6)
    assert abs(a) < 1e-9 and abs(c) < 1e-9


def test_default_fit_lands_between_the_floor_and_17():
    a, b, c, d, loss = quiet_fit()
    _, floor = least_squares()
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
    expected, floor = least_squares()
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
    (
        ["--steps", "0"],
        "argument --steps: expected a whole number of at least 1, got '0'",
    ),
    (
        ["--steps", "-5"],
        "argument --steps: expected a whole number of at least 1, got '-5'",
    ),
    (
        ["--steps", "1e3"],
        "argument --steps: expected a whole number of at least 1, got '1e3'",
    ),
    (
        ["--steps", "many"],
        "argument --steps: expected a whole number of at least 1, got 'many'",
    ),
    (["--lr", "0"], "argument --lr: expected a positive number such as 1e-6, got '0'"),
    (
        ["--lr=-1e-6"],
        "argument --lr: expected a positive number such as 1e-6, got '-1e-6'",
    ),
    (
        ["--lr", "nan"],
        "argument --lr: expected a positive number such as 1e-6, got 'nan'",
    ),
    (
        ["--lr", "inf"],
        "argument --lr: expected a positive number such as 1e-6, got 'inf'",
    ),
    (
        ["--lr", "fast"],
        "argument --lr: expected a positive number such as 1e-6, got 'fast'",
    ),
    (
        ["--seed", "-1"],
        "argument --seed: expected a whole number from 0 to 18446744073709551615, got '-1'",
    ),
    (
        ["--seed", str(2**64)],
        f"argument --seed: expected a whole number from 0 to 18446744073709551615, got '{2**64}'",
    ),
    (
        ["--seed", "lucky"],
        "argument --seed: expected a whole number from 0 to 18446744073709551615, got 'lucky'",
    ),
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
    ("lr", "step"), [("1e-3", 99), ("4e-6", 99), ("1e-3 --steps 5", 5)]
)
def test_divergence_stops_with_status_1_and_prints_no_nan(capsys, lr, step):
    status, out, err = run_main(capsys, "--device", "cpu", "--lr", *lr.split())
    assert status == 1
    assert out == "Using cpu device\n"  # no loss line, no nan, no Result
    assert len(err.splitlines()) == 1
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


def test_just_below_the_stable_limit_converges_without_a_false_alarm():
    a, b, c, d, loss = quiet_fit(steps=20_000, learning_rate=3.55e-6)
    expected, floor = least_squares()
    assert [a, b, c, d] == pytest.approx(expected, abs=1e-3)
    assert loss == pytest.approx(floor, rel=1e-5)


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
    monkeypatch.delattr(torch, "accelerator")
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
    assert "Exit status: 0 on success, 1 if the loss diverges" in " ".join(out.split())


# Import and notebook use ----------------------------------------------------------

KERNEL_ARGV = [
    "/usr/lib/python3/site-packages/ipykernel_launcher.py",
    "-f",
    "/root/.local/share/jupyter/runtime/kernel-1a2b.json",
]


def test_import_prints_nothing_and_trains_nothing(capsys):
    importlib.reload(polyfit_sin)
    assert capsys.readouterr() == ("", "")


def test_file_is_a_sphinx_gallery_example_with_notebook_cells():
    source = SCRIPT.read_text(encoding="utf-8")
    title, underline = polyfit_sin.__doc__.strip().splitlines()[:2]
    assert title == "PyTorch: Tensors"
    assert underline == "-" * len(title)
    assert source.startswith('"""\nPyTorch: Tensors\n')
    assert source.count("\n# %%\n") >= 3


def run_in_kernel(cells, namespace):
    """Run source cells in order in one namespace, as a Jupyter kernel does."""
    for cell in cells:
        exec(compile(cell, "<notebook cell>", "exec"), namespace)  # noqa: S102


def notebook_cells():
    """The file's `# %%` cells, as an editor's notebook view splits them."""
    return re.split(r"^# %%$", SCRIPT.read_text(encoding="utf-8"), flags=re.MULTILINE)


@pytest.mark.parametrize("how", ["whole file in one cell", "cell by cell"])
def test_notebook_run_prints_what_the_command_line_prints(
    monkeypatch, default_run, how
):
    # A Jupyter kernel: __name__ is "__main__", there is no __file__, ipykernel is
    # loaded, and sys.argv holds the kernel's own flags.
    monkeypatch.setattr(sys, "argv", KERNEL_ARGV)
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    cells = (
        [SCRIPT.read_text(encoding="utf-8")]
        if how == "whole file in one cell"
        else notebook_cells()
    )
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
        run_in_kernel([SCRIPT.read_text(encoding="utf-8")], namespace)
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
