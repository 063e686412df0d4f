"""The differential net: every registered optimizer and its variants, in every impl and parameter dtype,
equal the float64 single-tensor path on the same inputs (see ``tests/_kernel_net.py``), also in the
situations users meet. Bounds are relative to how far the reference moved the weights:

- float64 ≤ 1e-9, float32 ≤ 1e-4;
- bfloat16 and float16 ≤ T·u·max|x| + 0.1 × moved: each of the T steps rounds the weights to the dtype
  (unit roundoff u = 2^-8 for bfloat16, 2^-11 for float16), and the update itself, computed from states
  held in the dtype, may be off by a tenth of the distance moved.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch

import hf_adasam
from hf_adasam.optim import _base
from hf_adasam.registry import OPTIMIZERS, SPREAD

from . import _kernel_net as net
from ._kernel_net import DTYPES, STEPS, VARIANTS, Problem, deviation, distance, random_problem, reference, run

BOUND = {torch.float64: 1e-9, torch.float32: 1e-4}
UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
CASES = [(name, impl) for name, v in VARIANTS.items() for impl in v.impls]


@pytest.fixture(autouse=True, scope="module")
def _dynamo_room():
    """Room for every graph of this file in one dynamo cache: one kernel serves many variants, shapes and
    dtypes here, more graphs than hf-adasam's recompile limit (64) allows a training process; past it a
    kernel would fall back to foreach, and the compiled path would no longer be what is tested."""
    torch._dynamo.reset()
    with torch._dynamo.config.patch(recompile_limit=4096, accumulated_recompile_limit=4096):
        yield
    torch._dynamo.reset()


# a compiled test fails if its kernel fell back to foreach (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("compiled_means_compiled")


def _problem_with_dead_coordinates(seed: int = 0) -> Problem:
    """The main problem: a coordinate of a decayed and of an undecayed tensor never gets a gradient."""
    problem = random_problem(seed)
    for gs in problem.grads:
        gs[2][0, 0] = 0.0  # group 0 (weight decay)
        gs[5][0, 0] = 0.0  # group 1 (none)
    return problem


def _check(got: list[torch.Tensor], ref: list[torch.Tensor], x0: list[torch.Tensor], dtype: torch.dtype,
           what: str, must_move: bool = True) -> float:
    """Finite, and within the dtype's bound (a reference that did not move admits no move at all)."""
    assert all(torch.isfinite(p).all() for p in got), f"{what}: non-finite weights"
    moved = distance(ref, x0)
    assert moved > 0 or not must_move, f"{what}: the reference never moved"
    dev = deviation(got, ref, x0)
    if dtype in BOUND:
        assert dev <= BOUND[dtype], f"{what}: deviation {dev:.2e} of the distance moved > {BOUND[dtype]:.0e}"
    else:
        budget = STEPS * UNIT_ROUNDOFF[dtype] * max(r.abs().max().item() for r in ref) / moved + 0.1
        assert dev <= budget, f"{what}: deviation {dev:.2e} of the distance moved > {budget:.2e}"
    return dev


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize(("name", "impl"), CASES)
def test_every_impl_and_dtype_equals_the_float64_single_tensor_path(name: str, impl: str, dtype: torch.dtype) -> None:
    problem = _problem_with_dead_coordinates()
    got, _ = run(name, impl, dtype, problem)
    if name == "radam" and dtype == torch.float16:
        # torch.optim.RAdam's eps=1e-8 underflows in float16: an always-zero coordinate becomes 0/0 in every
        # impl, torch's math (docs/numerics.md#dtypes); the rest stays finite
        assert not torch.isfinite(got[2][0, 0]) and torch.isfinite(got[0]).all() and torch.isfinite(got[3]).all()
        return
    ref = reference(name, problem, dtype)
    _check(got, ref, problem.cast(dtype).x0, dtype, f"{name}/{impl}/{dtype}")


# ----------------------------------------------------------------------------------------------
# situations users meet (float64 and float32; every impl against the float64 single-tensor path)
# ----------------------------------------------------------------------------------------------
def _zero_first(k: int) -> Problem:
    """LoRA's A: its gradient is exactly zero while B is still zero (first k steps)."""
    problem = random_problem(1)
    for gs in problem.grads[:k]:
        gs[0] = torch.zeros_like(gs[0])
    return problem


def _missing_grads() -> Problem:
    """``p.grad is None`` on some steps: an unused embedding row, a layer frozen then unfrozen."""
    problem = random_problem(2)
    for t in (1, 2, 6):
        problem.grads[t][1] = None
    for t in range(0, 4):
        problem.grads[t][4] = None  # frozen for the first four steps
    problem.grads[9][2] = None
    return problem


def _all_zero_steps() -> Problem:
    problem = random_problem(3)
    for t in (0, 5):  # the first step, and one mid-run
        problem.grads[t] = [torch.zeros_like(g) for g in problem.grads[t]]
    return problem


def _noncontiguous() -> Problem:
    problem = random_problem(4)
    problem.noncontiguous = True
    return problem


# Tensors large enough that the compiled impl cuts them into rows of C elements and tail elements (the main
# problem's are all tail), with a different C in each param group (16 and 64): the same graphs as the main matrix
ROWS_SHAPES = ((40, 24), (17,), (33, 31), (64,), (2, 1000), ())

SITUATIONS = {
    "rows_and_tails": random_problem(13, shapes=ROWS_SHAPES),
    "zero_first_4_steps": _zero_first(4),
    "grad_none_some_steps": _missing_grads(),
    "all_zero_gradient_steps": _all_zero_steps(),
    "noncontiguous": _noncontiguous(),
    "grad_scale_1e-30": random_problem(5, scale=1e-30),
    "grad_scale_1e+20": random_problem(6, scale=1e20),
}


@pytest.mark.parametrize("situation", SITUATIONS)
@pytest.mark.parametrize(("name", "impl"), CASES)
def test_situations_in_float64_equal_the_single_tensor_path(name: str, impl: str, situation: str) -> None:
    problem = SITUATIONS[situation]
    got, _ = run(name, impl, torch.float64, problem)
    ref = reference(name, problem, torch.float64)
    _check(got, ref, problem.x0, torch.float64, f"{name}/{impl}/{situation}", must_move=False)


# The compiled kernels' handling of missing gradients (other buckets) and strides is checked in float64;
# in float32 they run where the dtype matters (graphs shared with the main matrix: no extra compile time).
NEW_GRAPHS = {"grad_none_some_steps", "noncontiguous"}


@pytest.mark.parametrize("situation", [s for s in SITUATIONS if s != "grad_scale_1e+20"])
@pytest.mark.parametrize(("name", "impl"), CASES)
def test_situations_in_float32_stay_within_the_float64_reference(name: str, impl: str, situation: str) -> None:
    """float32 equals the reference to 1e-4 of the distance moved, except where the float32 range cannot
    hold the statistics (1e-30: g² underflows); there no weight may move further than the reference's
    largest move, nor become non-finite."""
    if impl == "compiled" and situation in NEW_GRAPHS:
        pytest.skip("compiled kernel checked on this situation in float64 (saves ~90 s of compiling)")
    problem = SITUATIONS[situation]
    got, _ = run(name, impl, torch.float32, problem)
    ref = reference(name, problem, torch.float32)
    x0 = problem.cast(torch.float32).x0
    assert all(torch.isfinite(p).all() for p in got)
    if situation == "grad_scale_1e-30":
        moved, went = distance(ref, x0), distance(got, x0)
        ulp = max(torch.finfo(torch.float32).eps * x.abs().max().item() for x in x0)
        assert went <= moved * (1 + 1e-4) + ulp, f"moved {went:.2e}, the float64 reference {moved:.2e}"
    else:
        _check(got, ref, x0, torch.float32, f"{name}/{impl}/{situation}", must_move=False)


@pytest.mark.parametrize(("name", "impl"), CASES)
def test_float32_gradients_whose_square_overflows_behave_as_documented(name: str, impl: str) -> None:
    """With |g| = 1e20 in float32, g² overflows to inf: the entries that say so (``overflow_nan``: per-tensor or
    global statistics, docs/numerics.md#non-finite-gradients) turn weights into NaN, the others take a bounded step."""
    problem = SITUATIONS["grad_scale_1e+20"]
    got, _ = run(name, impl, torch.float32, problem)
    finite = all(torch.isfinite(p).all() for p in got)
    claimed_nan = OPTIMIZERS[VARIANTS[name].optim].overflow_nan
    assert finite == (not claimed_nan), f"{name}/{impl}: the registry says overflow_nan={claimed_nan}"
    if finite:  # never further than the float64 computation moved
        x0 = problem.cast(torch.float32).x0
        ref = reference(name, problem, torch.float32)
        moved, went = distance(ref, x0), distance(got, x0)
        assert went <= moved * (1 + 1e-4), f"moved {went:.2e}, the float64 reference {moved:.2e}"


def test_a_tensor_whose_first_gradients_are_zero_never_jumps() -> None:
    """LoRA's A under every optimizer: once its gradient turns non-zero no entry moves by more than a
    small multiple of lr in one step (AdaShift used to divide by eps there: ~1e8 lr)."""
    problem = _zero_first(4)
    for name, v in VARIANTS.items():
        params = [net._leaf(x, torch.float32, False) for x in problem.x0]
        opt = net.build(name, params, v.impls[-1])
        for t in range(STEPS):
            before = params[0].detach().clone()
            run(name, v.impls[-1], torch.float32, problem, steps=slice(t, t + 1), params=params, opt=opt)
            step = (params[0].detach() - before).abs().max().item()
            assert step <= 25 * v.lr, f"{name}: step {t + 1} moved A by {step:.2e} (lr {v.lr})"


@pytest.mark.parametrize(("name", "impl"), CASES)
def test_a_param_without_gradient_is_left_bit_for_bit(name: str, impl: str) -> None:
    problem = _missing_grads()
    params = [net._leaf(x, torch.float64, False) for x in problem.x0]  # float64: the situations' compiled graphs
    opt = net.build(name, params, impl)
    for t, gs in enumerate(problem.grads):
        before = [p.detach().clone() for p in params]
        run(name, impl, torch.float64, problem, steps=slice(t, t + 1), params=params, opt=opt)
        for p, b, g in zip(params, before, gs, strict=True):
            if g is None:
                assert torch.equal(p, b)


@pytest.mark.parametrize("load_impl", _base.IMPLS)
@pytest.mark.parametrize("save_impl", _base.IMPLS)
@pytest.mark.parametrize("name", [n for n, v in VARIANTS.items() if len(v.impls) == 3])
def test_state_dict_saved_mid_run_continues_in_another_impl(name: str, save_impl: str, load_impl: str) -> None:
    problem = _missing_grads()
    half = slice(0, STEPS // 2)
    params, opt = run(name, save_impl, torch.float64, problem, steps=half)
    saved = copy.deepcopy(opt.state_dict())
    resumed = [p.detach().clone().requires_grad_() for p in params]
    opt2 = net.build(name, resumed, load_impl)
    opt2.load_state_dict(saved)
    run(name, load_impl, torch.float64, problem, steps=slice(STEPS // 2, None), params=resumed, opt=opt2)
    ref = reference(name, problem, torch.float64)
    _check(resumed, ref, problem.x0, torch.float64, f"{name}: {save_impl} -> {load_impl}")


# ----------------------------------------------------------------------------------------------
# bad input gets an answer at construction
# ----------------------------------------------------------------------------------------------
# every entry's base variant, but RAdam's: it keeps torch.optim.RAdam's constructor (complex parameters included)
BASES = [next(iter(e.named_variants())) for e in OPTIMIZERS.values() if issubclass(e.cls, _base.KernelOptimizer)]


@pytest.mark.parametrize("dtype", [torch.complex64, torch.int64, torch.bool])
@pytest.mark.parametrize("name", BASES)
def test_complex_and_integer_params_are_refused_at_construction(name: str, dtype: torch.dtype) -> None:
    p = torch.zeros(3, dtype=dtype)
    with pytest.raises(ValueError, match=r"Invalid parameter dtype: torch\.(complex64|int64|bool)"):
        net.build(name, [torch.zeros(2, requires_grad=True), p], "foreach", groups=1)


@pytest.mark.parametrize("impl", _base.IMPLS)
@pytest.mark.parametrize("name", VARIANTS)
def test_a_tensor_lr_is_read_like_the_float(name: str, impl: str) -> None:
    problem = random_problem(7, steps=3)
    want, _ = run(name, impl, torch.float32, problem)
    params = [net._leaf(x, torch.float32, False) for x in problem.x0]
    opt = net.build(name, params, impl)
    for t, gs in enumerate(problem.grads, start=1):
        for k, group in enumerate(opt.param_groups):
            group["lr"] = torch.tensor(net.lr_at(VARIANTS[name].lr, k, t))
        for p, g in zip(params, gs, strict=True):
            p.grad = g.float().to(p.device)
        opt.step()
    for a, b in zip(params, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_a_tensor_lr_of_several_elements_is_refused() -> None:
    with pytest.raises(ValueError, match="Invalid lr"):
        hf_adasam.AdaSAM([torch.zeros(2, requires_grad=True)], lr=torch.tensor([1e-3, 1e-3]))


def test_a_kernel_that_cannot_compile_falls_back_to_foreach_with_a_warning(monkeypatch) -> None:
    class Failed(torch._dynamo.exc.TorchDynamoException):
        pass

    def refuse(fn, inductor=()):
        def call(*args, **kwargs):
            raise Failed("backend refused this graph")

        return call

    monkeypatch.setattr(_base, "compiled", refuse)
    monkeypatch.setattr(_base, "_COMPILE_FAILED", set())
    problem = random_problem(8, steps=4)
    want, _ = run("adasam", "foreach", torch.float32, problem)
    with pytest.warns(RuntimeWarning, match=r"could not be compiled \(Failed: backend refused this graph\).*foreach"):
        got, _ = run("adasam", "compiled", torch.float32, problem)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
    with warnings.catch_warnings():  # said once; later steps use foreach silently
        warnings.simplefilter("error")
        run("adasam", "compiled", torch.float32, problem)


def test_deviation_is_relative_to_the_distance_moved() -> None:
    x0 = [torch.zeros(3, dtype=torch.float64)]
    ref = [torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)]
    assert deviation([torch.tensor([1.0, 0.01, 0.0])], ref, x0) == pytest.approx(0.01)
    assert deviation([torch.tensor([math.nan, 0.0, 0.0])], ref, x0) == math.inf


# ----------------------------------------------------------------------------------------------
# what a non-finite gradient does: each entry's ``nonfinite`` claim (the README's table is generated from them)
# ----------------------------------------------------------------------------------------------
def _spread(got: list[torch.Tensor]) -> str:
    bad = [(~torch.isfinite(p)).sum().item() for p in got]
    if bad[0] == 1 and sum(bad) == 1:
        return "coordinate"
    if bad[0] == got[0].numel() and sum(bad) == bad[0]:
        return "tensor"
    if all(b == p.numel() for b, p in zip(bad, got, strict=True)):
        return "all"
    return f"neither: {bad}"


@pytest.mark.parametrize("bad", [math.inf, math.nan], ids=["inf", "nan"])
@pytest.mark.parametrize("optim", sorted(OPTIMIZERS))
def test_a_nonfinite_gradient_spreads_as_far_as_the_registry_says(optim: str, bad: float) -> None:
    claimed = OPTIMIZERS[optim].nonfinite[0 if bad == math.inf else 1].split()[0].strip(",")
    assert claimed in SPREAD, f"{optim}: a nonfinite claim starts with one of {SPREAD}, not {claimed!r}"
    name = next(iter(OPTIMIZERS[optim].named_variants()))  # the base variant (AdaShift: phi=max)
    problem = random_problem(11, steps=14)
    problem.grads[3][0][1, 2] = bad
    for impl in VARIANTS[name].impls:
        got, _ = run(name, impl, torch.float32, problem)
        assert _spread(got) == claimed, f"{optim}/{impl}: the registry (and docs/numerics.md) says {claimed}"


def test_a_kernel_says_once_that_it_compiles(monkeypatch) -> None:
    """One line the first time a kernel compiles: which kernel, that it compiles once for any model, roughly how
    long (the estimate benchmarks/first_step.py checks), and how to skip it (a compiling first step must not look
    hung)."""
    import logging

    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    monkeypatch.setattr(_base, "_ANNOUNCED", set())
    monkeypatch.setattr(_base, "_TRACED", set())
    keep = Keep()
    logging.getLogger("hf_adasam").addHandler(keep)
    try:
        run("adasam", "compiled", torch.float32, random_problem(9, steps=3))
        run("adasam", "foreach", torch.float32, random_problem(9, steps=3))
    finally:
        logging.getLogger("hf_adasam").removeHandler(keep)
    assert len(lines) == 1, lines
    assert "compiling the adasam kernel (float32, cpu)" in lines[0].replace(str(net.DEVICE.type), "cpu")
    assert "once for any model size" in lines[0] and _base.COLD_COMPILE_ESTIMATE in lines[0]
    assert "HF_ADASAM_IMPL=foreach" in lines[0]
