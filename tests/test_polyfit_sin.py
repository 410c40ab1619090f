"""The specification of polyfit_sin.py, and of every figure its README quotes."""

import contextlib
import io
import math
import pathlib
import re
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = pathlib.Path(__file__).resolve().parent.parent
# The published lesson's last two lines: the loss at step 1999, then a, b, c and d
PUBLISHED = """1999 9.045997619628906
Result: y = 0.009059899486601353 + 0.8446162343025208 x + -0.0015629848930984735 x^2 + -0.0916057676076889 x^3
"""
CHOOSE_DEVICE = """device = "cpu"
if torch.accelerator.is_available():
    device = torch.accelerator.current_accelerator().type
"""
DIVERGED = "Diverged by step {}: learning_rate = {} is too large"
NUMBER = r"(?<!\^)-?\d[\d.e+-]*"  # not the powers in x^2 and x^3
X = torch.linspace(-torch.pi, torch.pi, 2000).double()  # the script's points


def edit(source, *edits):  # each (old, new) edit made, where old occurs just once
    for old, new in edits:
        assert source.count(old) == 1, f"the script should hold {old!r} once"
        source = source.replace(old, new)
    return source


def setting(source, *lines):  # the named numbers set, as in `steps = 6000`
    for line in lines:
        name = line.split(" = ")[0]
        source, count = re.subn(rf"^{name} = .*$", line, source, flags=re.MULTILINE)
        assert count == 1, f"the script should set {name} once"
    return source


def on(device, source):  # the device named, the `if` that picks an accelerator gone
    return edit(source, (CHOOSE_DEVICE, f'device = "{device}"\n'))


def exec_source(source):  # run as one notebook cell: (printed, raised, names)
    names = {"__name__": "__main__"}
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        try:
            exec(compile(source, "polyfit_sin.py", "exec"), names)  # noqa: S102
        except FloatingPointError as error:
            return printed.getvalue(), error, names
    return printed.getvalue(), None, names


def losses(printed):  # the loss lines as {step: loss}
    found = re.findall(r"^(\d+) (\S+)$", printed, flags=re.MULTILINE)
    return {int(step): float(loss) for step, loss in found}


def numbers(text):
    return [float(n) for n in re.findall(NUMBER, text)]


def fit(powers=(0, 1, 2, 3)):  # least squares' fit, loss, gaps; 2 XᵀX's eigen pairs
    columns = torch.stack([X**p for p in powers], dim=1)
    best = torch.linalg.lstsq(columns, torch.sin(X)[:, None]).solution[:, 0]
    gap = (columns @ best - torch.sin(X)).abs()
    values, vectors = torch.linalg.eigh(2 * columns.T @ columns)
    return best.tolist(), (gap**2).sum().item(), gap, values.tolist(), vectors


def sci(value, digits=3):  # a number as the README writes it: 3.56e-6, 3.4e38
    mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def cited(text, pairs, reach=150):  # "label ~ figure | …": each figure near its label
    text, wrong = " ".join(text.split()), []  # line breaks aside
    for label, figure in (p.split(" ~ ") for p in " ".join(pairs.split()).split(" | ")):
        spots = [m.start() for m in re.finditer(re.escape(label), text, re.IGNORECASE)]
        hits = [m.start() for m in re.finditer(re.escape(figure), text)]
        if not any(abs(hit - spot) <= reach for hit in hits for spot in spots):
            wrong.append(figure)
    assert wrong == [], f"not quoted, or not near their labels: {wrong}"


def quoted(readme, line, printed):  # a quoted `step loss` line is the run's
    assert f"`{line}`" in " ".join(readme.split()), f"the README should quote `{line}`"
    step, loss = line.split()
    assert losses(printed).get(int(step)) == pytest.approx(float(loss), rel=1e-5), line


def block(readme, kind, holding=""):  # the one fenced block of a kind, holding this
    fences = re.findall(r"^ *```(\w*)\n(.*?)^ *```$", readme, re.DOTALL | re.MULTILINE)
    found = [textwrap.dedent(b) for k, b in fences if k == kind and holding in b]
    assert len(found) == 1, f"the README should have one {kind} block with {holding!r}"
    return found[0]


def cells(source):  # the file's cells, split at each `# %%` line: [(kind, source)]
    parts = re.split(r"^# %%( \[markdown\])?\n", source, flags=re.MULTILINE)
    return [("markdown" if m else "code", t) for m, t in zip(parts[1::2], parts[2::2])]


class Watch(TorchDispatchMode):
    # Counts host reads (.item()), answering 1, or inf at read `inf`; notes randn's device
    reads, drawn, inf = 0, (), None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads += 1  # a meta tensor holds no number to read:
            return math.inf if self.reads == self.inf else 1.0
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket is torch.ops.aten.randn:
            self.drawn += (out.device.type,)
        return out


@pytest.fixture(scope="session")
def source():
    return (ROOT / "polyfit_sin.py").read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def readme():
    return (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def run(source):  # the script on the CPU, these numbers set: (printed, raised, names)
    done = {}

    def run(*lines, script=None):
        if (lines, script) not in done:
            copy = on("cpu", setting(script or source, *lines))
            done[lines, script] = exec_source(copy)
        return done[lines, script]

    return run


def test_final_loss_and_coefficients(run):
    printed, raised, _ = run()
    step, loss, a, b, c, d = numbers("".join(printed.splitlines(True)[-2:]))
    assert (step, raised) == (1999, None)
    published = numbers(PUBLISHED)[1:]
    assert [loss, a, b, c, d] == pytest.approx(published, rel=1e-5, abs=1e-6)
    assert fit()[1] < loss < 1.03 * fit()[1]  # just above least squares


def test_the_command_line_prints_the_published_sample(tmp_path, source, readme):
    (tmp_path / "polyfit_sin.py").write_text(on("cpu", source), encoding="utf-8")
    argv = [sys.executable, str(tmp_path / "polyfit_sin.py")]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    sample = block(readme, "", "Using cpu device")
    assert (done.returncode, done.stderr) == (0, "") and sample.endswith(PUBLISHED)
    assert re.sub(NUMBER, "N", done.stdout) == re.sub(NUMBER, "N", sample)
    found = re.findall(r"-?\d+\.\S*", done.stdout + sample)  # each as float32 prints
    assert [repr(torch.tensor(float(n)).item()) for n in found] == found
    assert numbers(done.stdout) == pytest.approx(numbers(sample), rel=1e-5, abs=1e-6)


# Rate, steps, stop: an inf loss, a NaN loss, b and d inf but not a, all NaN, at step 0
@pytest.mark.parametrize(
    "case", ["3.7e-6 2000 599", "1e-3 2000 99", "1e-3 14 13", "1e-3 15 14", "3e38 1 0"]
)
def test_a_divergence_stops_naming_step_and_rate(run, case):
    rate, steps, step = case.split()
    printed, raised, _ = run(f"learning_rate = {rate}", f"steps = {steps}")
    assert str(raised) == DIVERGED.format(step, float(rate))  # a FloatingPointError
    assert "Result" not in printed and not re.search(r"nan|inf", printed)
    climb = list(losses(printed).values())  # printed as it climbed
    assert climb == sorted(climb) and len(climb) == int(step) // 100


def test_a_loss_that_climbs_but_stays_finite_is_printed_as_it_climbs(run):
    printed, raised, _ = run("learning_rate = 3.56e-6")  # just past the limit
    climb = list(losses(printed).values())
    assert raised is None and "Result" in printed
    assert climb == sorted(climb) and climb[-1] > 50 * climb[0]


def test_each_hand_derived_gradient_is_autograds(run):
    _, _, names = run("steps = 1")  # the gradients at the start
    torch.manual_seed(42)
    start = [torch.randn(()).double().requires_grad_() for _ in "abcd"]
    loss = ((sum(w * X**p for p, w in enumerate(start)) - torch.sin(X)) ** 2).sum()
    autograd = torch.stack(torch.autograd.grad(loss, start))
    by_hand = torch.stack([names[f"grad_{w}"] for w in "abcd"]).double()
    assert (autograd.abs() > 1000).all()  # none near zero, so rtol means something
    torch.testing.assert_close(by_hand, autograd, rtol=1e-5, atol=0)


def test_the_device_is_read_only_to_print_and_the_weights_drawn_on_the_cpu(source):
    with Watch() as watch:  # 300 steps on the meta device, a stand-in accelerator
        printed, _, names = exec_source(setting(on("meta", source), "steps = 300"))
    assert watch.reads == len(losses(printed)) + 4 == 3 + 4  # each loss, a, b, c, d
    assert watch.drawn == ("cpu",) * 4  # then moved: the weights live on the device
    assert {names[v].device.type for v in ["x", "a", "b", "c", "d"]} == {"meta"}


def test_if_any_weight_is_not_finite_the_result_is_not_printed(source):
    for read in range(2, 6):  # after the one loss, a, b, c or d reads as inf
        with Watch() as watch:  # on the meta device, as in the test above
            watch.inf = read
            printed, raised, _ = exec_source(setting(on("meta", source), "steps = 100"))
        assert str(raised) == DIVERGED.format(99, 1e-6), f"read {read}"
        assert "Result" not in printed


def test_the_cells_alternate_prose_and_code_with_one_title_then_sections(source):
    kinds = [kind for kind, _ in cells(source)]
    assert kinds == ["markdown", "code", "markdown", "code", "markdown"]
    # A comment right under `# %%` would be prose to sphinx-gallery
    assert not any(t.startswith("#") for kind, t in cells(source) if kind == "code")
    prose = "".join(t for kind, t in cells(source) if kind == "markdown")
    prose = re.sub(r'^(# ?|""")', "", prose, flags=re.MULTILINE)  # as a notebook shows
    underlined = re.findall(r"^(.+)\n([=-]{3,})$", prose, re.MULTILINE)
    assert [line[0] for _, line in underlined] == ["=", "-", "-"]
    assert all(len(title) == len(line) for title, line in underlined)
    # No RST role, escape or `x` (italics in RST), which a notebook shows raw
    assert not re.search(r":\w+:`|\\|(?<!`)`[^`]+`(?!`)", prose)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_cuda_gpu_the_output_matches_and_it_waits_only_to_print(source, run):
    printed, raised, _ = exec_source(source)
    assert raised is None and printed.startswith("Using cuda device\n")
    assert numbers(printed) == pytest.approx(numbers(run()[0]), rel=1e-4)
    waits = []  # 800 more steps, 8 more printed losses: one wait for the GPU each
    for steps in (200, 1000):
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            exec_source(setting(source, f"steps = {steps}"))
        torch.cuda.set_sync_debug_mode("default")
        waits.append(len([w for w in caught if "synchroniz" in str(w.message)]))
    assert waits[1] - waits[0] == 8


def test_each_figure_and_claim_in_the_files_prose_and_comments(source, run):
    x, *weights = (run("steps = 0")[2][name] for name in "xabcd")
    assert (len(x), x.dtype, {w.dim() for w in weights}) == (2000, torch.float32, {0})
    assert (x[0].item(), x[-1].item()) == pytest.approx((-math.pi, math.pi))
    _, floor, gap, (*_, steep), _ = fit()
    last, limit = losses(run()[0])[1999], sci(2 / steep, 4)
    text = " ".join(re.sub(r"^ *# ?", "", source, flags=re.MULTILINE).split())
    claims = f"""Fit y = a + b x + c x² + d x³ to y = sin(x) on [-π, π] by gradient
    descent, with four tensors as the weights and every gradient worked out by hand |
    You will learn what a tensor is next to a numpy array, the four parts of a training
    step, and why the learning rate has to be so small | A tensor is an array of numbers
    much like a numpy array, but it can live on a GPU as well as on the CPU | float32 by
    default, where numpy uses float64 | where the installed PyTorch can use one | to stay
    on the CPU, delete the ``if`` | Each ``# %%`` line starts a notebook cell | The CPU,
    unless PyTorch finds an accelerator it can use (a CUDA GPU, say) |
    ``torch.linalg.lstsq`` would solve this fit exactly, in one call; gradient descent is
    what carries over to models that no formula solves | Each step predicts y at every
    point (the forward pass), measures how far off that is (the loss), works out how the
    loss changes with each weight (the backward pass) and moves each weight a small step
    downhill (the update) | The loss sums over 2000 points, so its gradients are large
    and the steps must be small: below 2 / {steep:,.0f} ≈ {limit}, or the loss climbs |
    2000 points from -π to π, on the device; x² and x³ never change, so compute them once
    | torch.randn(()) draws a 0-d tensor, one number. Each is drawn on the CPU, then
    copied to the device, so that a seed gives the same start on any device | Forward
    pass: the cubic's prediction at every point, and its error there | Loss: the squared
    error, summed, as a tensor. Reading it with .item() waits for a GPU to finish the
    work queued so far, so it is read only to print it | inf or NaN: stop rather than
    print it | by the chain rule: loss = Σ error² gives ∂loss/∂y_pred = 2 error, and
    ∂y_pred/∂a = 1, ∂y_pred/∂b = x, ∂y_pred/∂c = x², ∂y_pred/∂d = x³ | grad_a =
    grad_y_pred.sum() # ∂loss/∂a = Σ 2 error | grad_b = (grad_y_pred * x).sum() # ∂loss/∂b
    = Σ 2 error x | grad_c = (grad_y_pred * x2).sum() # ∂loss/∂c = Σ 2 error x² | grad_d =
    (grad_y_pred * x3).sum() # ∂loss/∂d = Σ 2 error x³ | Update: each weight moves
    against its gradient, scaled by the learning rate | Read each weight once, and check
    it too: a run of under 100 steps prints no loss | No cubic matches sin(x). The best,
    by least squares, has loss ≈ {floor:.2f} and is off by about {gap[0]:.1f} at ±π; this
    run's last printed loss is {last:.2f} | The line ``loss = …`` only reports: the
    backward pass is derived by hand from Σ error², so changing it alone changes the
    printout, not the fit | The next lesson, on autograd, derives the gradients from
    whatever loss is written, with one call: ``loss.backward()`` | loss.item()"""
    missing = [c for c in " ".join(claims.split()).split(" | ") if c not in text]
    assert missing == [], f"the file no longer says: {missing}"


def test_each_figure_in_the_readme(readme, source, run):
    best, floor, gap, (flat_a, flat_b, _, steep), vectors = fit()
    _, floor5, _, (flat5, *_, steep5), _ = fit((0, 1, 2, 3, 5))
    k_d, factor = 2 * (X**6).sum().item(), 1 - 3.7e-6 * steep
    a, b, c, d = (run()[2][w].item() for w in "abcd")
    run_gap = (a + b * X + c * X**2 + d * X**3 - torch.sin(X)).abs()
    left_a, left_b = ((1 - 1e-6 * k) ** 2000 for k in (flat_a, flat_b))
    assert vectors.abs().argmax(dim=0).tolist() == [0, 1, 2, 3]  # mostly a, b, c, d
    assert vectors[1, 3].abs() > 0.1  # the steepest, mostly d, with a little b
    assert best[0] == pytest.approx(0, abs=1e-9) == best[2] and run_gap.argmax() == 1999
    chart = block(readme, "mermaid").splitlines()[-2:]  # sin(x), then the run's cubic
    points = [-math.pi + i * math.pi / 12 for i in range(25)]
    for line, f in zip(chart, [math.sin, lambda t: a + b * t + c * t**2 + d * t**3]):
        values = (f"{f(t):.2f}".replace("-0.00", "0.00") for t in points)
        assert line == "  line [" + ", ".join(values) + "]"
    least = re.search(r"torch>=([\d.]+)", (ROOT / "requirements.txt").read_text())
    first, seed = min(losses(run()[0])), run()[2]["seed"]
    data, weight = re.findall(r"^[xa] = torch.(?:lin|randn).*", source, re.MULTILINE)
    fold, top = round(steep5 / flat5, -2), torch.finfo(torch.float32).max
    cited(
        readme,
        f"""You need ~ PyTorch {least[1]} | counted from 0 ~ `{first}` is the {first + 1}th
        | The seed ~ {seed} | data ~ `{data}` | a weight ~ `{weight}` | signs ~ `+
        {str(d)[:7]}… x^3` | signs ~ −{str(-d)[:6]}… x³ | d alone ~ 2 Σ x⁶ ≈
        {round(k_d, -3):,.0f} | d alone ~ lr < {sci(2 / k_d)} | a little b ~ k =
        {steep:,.0f} | limit ~ 2 / {steep:,.0f} ≈ {sci(2 / steep, 4)} | squares ~ y =
        {best[1]:.5f} x − {-best[3]:.6f} x³ | squares ~ loss {floor:.3f} | Taylor ~
        {gap[0]:.3f} at ±π | at most ~ {run_gap.max():.3f}, at π | multiplies ~ 1 −
        3.7e-6 × {steep:,.0f} ≈ −{-factor:.5f} | loss line ~ {-factor:.5f}²⁰⁰ ≈
        {factor**200 / 1e6:.1f} million | float32's largest ~ {sci(top, 2)} | flattest
        two ~ k = {flat_a:,.1f} and {flat_b:,.0f} | flattest two ~ mostly a and b | 2000
        steps ~ {left_a:.1%} and {left_b:.1%} | 2000 steps ~ b is {b:.3f}, not
        {best[1]:.3f} | limit becomes ~ 2000 × {sci(2 / steep, 4)} ≈ {sci(4000 / steep, 2)}
        | floor ~ {floor:.3f} to {floor5:.4f} | largest curvature ~ {sci(steep5)} | limit
        is ~ 2 / {sci(steep5)} ≈ {sci(2 / steep5)} | smallest ~ {flat5:.0f}, {fold:,.0f}""",
    )


def test_the_readme_prints_the_four_curvatures(readme, source):
    cited(readme, "print all four ~ before the loop")
    loop = re.search(r"^for .*\n", source, flags=re.MULTILINE)[0]
    script = edit(on("cpu", source), (loop, block(readme, "python", "eigvalsh") + loop))
    shown = re.search(r"tensor\(\[(.*?)\]", exec_source(script)[0], re.DOTALL)
    assert numbers(shown[1]) == pytest.approx(fit()[3], rel=1e-6)


@pytest.mark.filterwarnings("ignore:FigureCanvasAgg")  # Agg shows no window, says so
def test_the_plot_snippet_draws_sin_and_the_runs_cubic(readme, source):
    pytest.importorskip("matplotlib").use("Agg")
    snippet = block(readme, "python", "matplotlib")
    names = exec_source(on("cpu", source) + snippet)[2]
    sin, cubic = (line.get_ydata() for line in names["plt"].gca().get_lines())
    y_pred = sum(names[w] * names["x"] ** p for p, w in enumerate("abcd"))
    assert sin == pytest.approx(names["y"].tolist())
    assert cubic == pytest.approx(y_pred.tolist(), abs=1e-6)


def test_try_it_1_below_the_limit_it_falls_above_it_climbs(readme, source, run):
    assert "\nlearning_rate = 1e-6\n" in source, "Try it 1 edits `learning_rate = 1e-6`"
    cited(readme, "Change ~ `learning_rate = 1e-6` | Change ~ `learning_rate = 3.5e-6`")
    cited(readme, "then ~ `learning_rate = 3.7e-6`")
    quoted(readme, "1999 8.817167282104492", run("learning_rate = 3.5e-6")[0])
    printed, raised, _ = run("learning_rate = 3.7e-6")  # just above: one factor a line
    quoted(readme, "99 53889515520.0", printed)
    quoted(readme, "499 2.646820480240457e+37", printed)
    factor = 1 - 3.7e-6 * fit()[3][-1]
    climb = list(losses(printed).values())
    assert climb[1:] == pytest.approx([c * factor**200 for c in climb[:-1]], rel=1e-4)
    assert climb[-1] * factor**200 > torch.finfo(torch.float32).max
    cited(readme, f"float32 ~ `FloatingPointError: {raised}`")


def test_try_it_2_a_third_of_the_rate_takes_three_times_the_steps(readme, run):
    for rate, line, steps in [("3e-6", 799, 2000), ("1e-6", 2299, 6000)]:
        printed = run(f"learning_rate = {rate}", f"steps = {steps}")[0]
        near = [t for t, loss in losses(printed).items() if loss < 1.01 * fit()[1]]
        assert near[0] == line
    quoted(readme, "5999 8.817166328430176", printed)
    cited(readme, "1% ~ step 799 | three times ~ step 2299 | 6000 ~ 1e-6")


def test_try_it_3_a_mean_takes_a_2000_times_larger_rate(readme, source, run):
    old, new = "grad_y_pred = 2.0 * error", "grad_y_pred = 2.0 * error / 2000"
    cited(readme, f"mean ~ `{old}` | mean ~ `{new}`")
    mean = edit(source, (old + "\n", new + "\n"))
    printed = run("learning_rate = 2e-3", script=mean)[0]
    quoted(readme, "1999 9.045997619628906", printed)
    assert losses(printed) == pytest.approx(losses(run()[0]), rel=1e-6)
    quoted(readme, "1999 7868.46533203125", run("learning_rate = 1e-6", script=mean)[0])


def test_try_it_4_an_x5_term_stops_the_default_rate_at_step_99(readme, source, run):
    x5 = source
    for hunk in block(readme, "diff").split("@@\n"):
        lines = hunk.splitlines(keepends=True)
        old = "".join(line[1:] for line in lines if line[0] in " -")
        x5 = edit(x5, (old, "".join(line[1:] for line in lines if line[0] in " +")))
    assert str(run(script=x5)[1]).startswith("Diverged by step 99:")
    slow = run("learning_rate = 5e-8", script=x5)[0]
    assert slow.endswith(" x^5\n")
    quoted(readme, "1999 306.29901123046875", slow)


def test_try_it_5_autograd_gives_the_hand_derived_gradient(readme, source):
    snippet = block(readme, "python", "backward")
    pair = exec_source(on("cpu", source) + snippet)[0].splitlines()[-1]
    by_autograd, by_hand = map(float, pair.split())
    assert by_autograd == by_hand != 0
    cited(readme, f"same gradient ~ `{pair}`")
