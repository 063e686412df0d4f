"""Dispatch that does not grow with the number of tensors (the compiled impl's arena calls), and the automatic choice
between the foreach and compiled kernels.

- Per step, the compiled impl makes as many compiled calls, and as many calls into torch's dispatcher in all, at
  500 tensors as at 100: counted by torch's profiler (its ``Torch-Compiled Region`` events and the outermost aten
  ops), not by hf-adasam's own code. (The grouped design this replaced made one call per two tensors: 50 and 250.)
- The arena's layout covers every element of every tensor exactly once (against an element-by-element count).
- A bucket mixing tensors the arena takes with strided ones, and parameters that overlap in memory, give the
  float64 single-tensor path's result.
- SAM's and ASAM's compiled tensor work equals the foreach form's, and restores w bit for bit.
- ``impl="auto"``: the foreach kernels until the optimizer has spent ``AUTO_SWITCH_S`` in steps, then compiled.
- A kernel whose next call after ``torch._dynamo.reset()`` is on a bucket without a whole row allocates no buffer of
  the bucket's size in a step on a large bucket (torch's profiler), with one thread or two.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import hf_adasam
from hf_adasam.optim import _arena, _base
from hf_adasam.sharpness.perturbation import Perturbation

pytestmark = pytest.mark.usefixtures("compiled_means_compiled")


def _shapes(n: int) -> list[tuple[int, ...]]:
    """``n`` small tensors of varied sizes: rows and tails, 1-D and 2-D (LoRA-like A/B pairs and biases)."""
    out: list[tuple[int, ...]] = []
    for i in range(n):
        out.append(((4, 16 + i % 5), (24 + i % 7, 4), (i % 9 + 1,))[i % 3])
    return out


def _model(n: int, seed: int = 0) -> tuple[list[torch.Tensor], list[dict]]:
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=g).requires_grad_() for s in _shapes(n)]
    return params, [{"params": [p for p in params if p.dim() > 1], "weight_decay": 0.01},
                    {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0}]


def _set_grads(params: list[torch.Tensor], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype) * 1e-2


def _counts(step) -> tuple[int, int]:
    """(compiled-graph calls, outermost dispatcher calls: aten ops and compiled calls not inside another) of one
    call of ``step``, from torch's profiler."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()

    def counted(e) -> bool:
        return e.name.startswith(("aten::", "Torch-Compiled Region"))

    def outermost(e) -> bool:
        p = e.cpu_parent
        while p is not None:
            if counted(p):
                return False
            p = p.cpu_parent
        return True

    calls = [e for e in prof.events() if counted(e) and outermost(e)]
    return sum(e.name.startswith("Torch-Compiled Region") for e in calls), len(calls)


@pytest.mark.parametrize("name", sorted(hf_adasam.OPTIMIZERS))
def test_compiled_calls_per_step_are_the_same_at_100_and_500_tensors(name: str) -> None:
    """As many compiled calls per step as the registry says the algorithm has kernels, per param group (two)."""
    entry = hf_adasam.OPTIMIZERS[name]
    counts = {}
    for n in (100, 500):
        params, groups = _model(n)
        opt = hf_adasam.create_optimizer(name, groups, impl="compiled", **entry.bench_kwargs())
        for t in range(12):  # past AdaShift's window (n = 10), whose first steps only fill it
            _set_grads(params, t)
            opt.step()
        _set_grads(params, 99)
        counts[n] = _counts(opt.step)
    assert counts[100][0] == 2 * entry.kernels, f"{name}: the registry says {entry.kernels} kernels; {counts}"
    assert counts[100] == counts[500], f"{name}: (compiled calls, dispatcher calls) per step {counts}"


def test_the_sam_ops_make_the_same_calls_at_100_and_500_tensors() -> None:
    counts = {}
    for n in (100, 500):
        params, _ = _model(n)
        _set_grads(params, 0)
        grads = [p.grad for p in params]
        for adaptive in (False, True):
            pert = Perturbation(0.05, adaptive=adaptive, impl="compiled")

            def ops(pert=pert, params=params, grads=grads) -> None:
                with torch.no_grad():
                    pert.perturb(params, grads, pert.grad_norm(grads))
                    pert.restore(params)

            ops()
            counts[(n, adaptive)] = _counts(ops)
    for adaptive in (False, True):
        compiled, _ = counts[(100, adaptive)]
        assert compiled == (4 if adaptive else 3), counts  # ||g||, (ASAM's norms), save and move, restore
        assert counts[(100, adaptive)] == counts[(500, adaptive)], counts


@pytest.mark.parametrize("numels", [(1,), (16,), (15, 17, 1024, 1, 33), (4096,) * 3 + (7,), (3, 5, 7, 11)])
def test_the_layout_covers_every_element_exactly_once(numels: tuple[int, ...]) -> None:
    lay = _arena.layout(numels, torch.device("cpu"))
    seen = [torch.zeros(n, dtype=torch.int64) for n in numels]
    for t, start in zip(lay.tid_rows.tolist(), lay.start_rows.tolist(), strict=True):
        seen[t][start : start + lay.C] += 1
        assert start + lay.C <= numels[t]
    for t, pos in zip(lay.tid_tail.tolist(), lay.pos_tail.tolist(), strict=True):
        seen[t][pos] += 1
    assert all(bool((s == 1).all()) for s in seen)
    tails = sum(n % lay.C for n in numels)
    assert lay.tid_tail.numel() == tails and lay.rows * lay.C + tails == sum(numels)


def _float64_run(impl: str, params: list[torch.Tensor], steps: int = 6) -> list[torch.Tensor]:
    opt = hf_adasam.create_optimizer("adasam", [{"params": params, "weight_decay": 0.1}], lr=1e-2, impl=impl)
    for t in range(steps):
        g = torch.Generator().manual_seed(t)
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
        opt.step()
    return [p.detach().clone() for p in params]


def test_a_bucket_mixing_contiguous_and_strided_tensors_equals_the_single_tensor_path() -> None:
    g = torch.Generator().manual_seed(3)
    base = [torch.randn(s, generator=g, dtype=torch.float64) for s in [(40, 24), (17,), (33, 31), (64,)]]

    def leaves() -> list[torch.Tensor]:
        out = [x.clone() for x in base]
        out[2] = out[2].t().contiguous().t()  # strided: takes the foreach kernel, the others one arena call
        return [x.requires_grad_() for x in out]

    want, got = _float64_run("single", leaves()), _float64_run("compiled", leaves())
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-13)


def test_parameters_overlapping_in_memory_take_foreach_with_a_warning(monkeypatch) -> None:
    """Elements 16..31 belong to both parameters: foreach updates them once per parameter, op by op; updating
    both in place in one call would race, so the compiled impl runs the foreach kernel, and says so."""
    monkeypatch.setattr(_base, "_NOT_ARENA_SAID", set())

    def leaves() -> list[torch.Tensor]:
        buf = torch.arange(48, dtype=torch.float64) / 48
        return [torch.nn.Parameter(buf[:32].view(4, 8)), torch.nn.Parameter(buf[16:].view(4, 8))]

    want = _float64_run("foreach", leaves())
    with pytest.warns(RuntimeWarning, match="overlap in memory"):
        got = _float64_run("compiled", leaves())
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("adaptive", "scope"), [(False, "all"), (True, "all"), (True, "weights")])
def test_compiled_sam_ops_equal_the_foreach_ones_and_restore_bit_for_bit(adaptive: bool, scope: str,
                                                                          dtype: torch.dtype) -> None:
    shapes = [(40, 24), (17,), (33, 31), (64,), (2, 1000), ()]
    g = torch.Generator().manual_seed(1)
    x0 = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    grads = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    runs = {}
    for impl in ("foreach", "compiled"):
        params = [x.clone() for x in x0]
        pert = Perturbation(0.05, adaptive=adaptive, asam_scope=scope, impl=impl)
        pert.set_names([(f"layer{i}.{'weight' if i % 2 == 0 else 'bias'}", p) for i, p in enumerate(params)])
        norm = pert.grad_norm(grads)
        enorm = pert.perturb(params, grads, norm)
        moved = [p.clone() for p in params]
        pert.restore(params)
        assert all(torch.equal(p, x) for p, x in zip(params, x0, strict=True)), f"{impl}: w not restored exactly"
        runs[impl] = float(norm), enorm, moved
    (n_f, e_f, w_f), (n_c, e_c, w_c) = runs["foreach"], runs["compiled"]
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    assert n_c == pytest.approx(n_f, rel=tol) and e_c == pytest.approx(e_f, rel=tol)
    # the moved w: the same up to the rounding of w + e (two units in the last place of the largest |w|)
    ulp = torch.finfo(dtype).eps * max(x.abs().max().item() for x in x0)
    assert max((a - b).abs().max().item() for a, b in zip(w_c, w_f, strict=True)) <= 2 * ulp
    if not adaptive:  # ||e|| = rho for SAM
        assert e_c == pytest.approx(0.05, rel=1e-9)


# ----------------------------------------------------------------------------------------------
# impl="auto"
# ----------------------------------------------------------------------------------------------
def test_the_default_impl_is_auto_unless_the_environment_says_otherwise(monkeypatch) -> None:
    monkeypatch.delenv(_base.IMPL_ENV, raising=False)
    assert _base.default_impl() == "auto"
    assert hf_adasam.AdaSAM([torch.zeros(2, requires_grad=True)]).impl == "auto"
    monkeypatch.setenv(_base.IMPL_ENV, "foreach")
    assert hf_adasam.AdaSAM([torch.zeros(2, requires_grad=True)]).impl == "foreach"
    with pytest.raises(ValueError, match="allowed values are auto, compiled, foreach, single"):
        hf_adasam.AdaSAM([torch.zeros(2, requires_grad=True)], impl="fast")


@pytest.mark.parametrize("name", ["adasam", "radam", "adai"])
def test_auto_runs_foreach_until_the_budget_is_spent_then_compiled(monkeypatch, name: str) -> None:
    """With a budget of one step, step 1 runs foreach and every later step compiled: the trajectory is the
    foreach kernel's for one step, then the compiled one's (float64: both equal the single-tensor path)."""
    monkeypatch.setattr(_base, "AUTO_SWITCH_S", 1e-9)
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    monkeypatch.setattr(_base, "_AUTO_SAID", [])
    keep = Keep()
    logging.getLogger("hf_adasam").addHandler(keep)
    try:
        runs = {}
        for impl in ("single", "auto"):
            params, groups = _model(30, seed=4)
            params = [p.detach().double().requires_grad_() for p in params]
            groups = [{"params": params[: len(params) // 2], "weight_decay": 0.01},
                      {"params": params[len(params) // 2 :]}]
            opt = hf_adasam.create_optimizer(name, groups, impl=impl, **hf_adasam.OPTIMIZERS[name].bench_kwargs())
            used = []
            for t in range(4):
                used.append(opt.kernel_impl)
                _set_grads(params, t)
                opt.step()
            runs[impl] = [p.detach() for p in params], used
    finally:
        logging.getLogger("hf_adasam").removeHandler(keep)
    assert runs["auto"][1] == ["foreach", "compiled", "compiled", "compiled"]
    for a, b in zip(runs["auto"][0], runs["single"][0], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert sum("impl=auto" in line and "then compiles them once" in line for line in lines) == 1, lines
    assert any("compiling its kernels (impl=auto)" in line for line in lines), lines


def test_auto_never_compiles_a_run_shorter_than_the_budget(monkeypatch) -> None:
    monkeypatch.setattr(_base, "AUTO_SWITCH_S", math.inf)
    monkeypatch.setattr(_base, "compiled", lambda *a, **k: pytest.fail("auto compiled within its budget"))
    params, groups = _model(40)
    opt = hf_adasam.create_optimizer("set_adam", groups, lr=1e-3, impl="auto")
    pert = Perturbation(0.05, impl="auto")
    for t in range(5):
        _set_grads(params, t)
        grads = [p.grad for p in params]
        with torch.no_grad():
            pert.perturb(params, grads, pert.grad_norm(grads))
            pert.restore(params)
        opt.step()
    assert opt.kernel_impl == pert.kernel_impl == "foreach"


def test_kernels_recompile_after_dynamo_is_reset() -> None:
    """``torch._dynamo.reset()`` drops the compiled graphs; the next call compiles again on that call's sizes (here
    tiny, some of one element) with hf-adasam's compile settings. Without them inductor failed to compile SET-Adam's
    phase 1 on these sizes (an assertion in its C++ code generator) and the kernel fell back to foreach."""
    params, groups = _model(100)
    opt = hf_adasam.create_optimizer("set_adam", groups, impl="compiled", lr=1e-3)
    _set_grads(params, 0)
    opt.step()
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    small = [torch.randn(s, generator=g).requires_grad_() for s in [(3, 4), (5,), (2, 3, 2), (1,), (7, 1)]]
    want = [p.detach().clone().requires_grad_() for p in small]

    def groups(ps: list[torch.Tensor]) -> list[dict]:  # the last bucket: one tensor of 7 elements
        return [{"params": ps[:2]}, {"params": ps[2:4], "weight_decay": 0.0}, {"params": ps[4:]}]

    opt = hf_adasam.create_optimizer("set_adam", groups(small), impl="compiled", lr=1e-3)
    ref = hf_adasam.create_optimizer("set_adam", groups(want), impl="foreach", lr=1e-3)
    for t in range(3):
        _set_grads(small, t)
        _set_grads(want, t)
        opt.step()
        ref.step()
    for a, b in zip(small, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["adasam", "set_adam", "adashift"])
def test_one_graph_per_kernel_whatever_the_bucket(name: str) -> None:
    """Buckets of tail elements only, of whole rows only (every size a multiple of the row length: LoRA's) and of
    both run the graphs compiled for the first one: no guard on their sizes fails (a [lists, 0] offsets tensor
    once did, and compiled every graph twice)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    buckets = [[(3, 4), (5,), (7,)], [(64, 16), (16, 64)], [(40, 24), (17,), (33, 31)], [(2,)]]
    for shapes in buckets:
        g = torch.Generator().manual_seed(len(shapes))
        params = [torch.randn(s, generator=g).requires_grad_() for s in shapes]
        opt = hf_adasam.create_optimizer(name, params, impl="compiled", lr=1e-3,
                                         **({"n": 2} if name == "adashift" else {}))
        for t in range(4):
            _set_grads(params, t)
            opt.step()
    kernels = hf_adasam.OPTIMIZERS[name].kernels
    assert counters["stats"]["unique_graphs"] == kernels, dict(counters["stats"])
    assert not counters["recompiles"], dict(counters["recompiles"])


def _peak_allocated(step, trace: Path) -> int:
    """The most memory one call of ``step`` held allocated at once (beyond what was allocated before it), in bytes:
    from the ``[memory]`` events of torch's profiler, here read from its Chrome trace, which lists every allocation
    (the per-op totals of ``prof.events()`` net out a buffer that compiled code allocates and frees)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    prof.export_chrome_trace(str(trace))
    events = json.loads(trace.read_text())["traceEvents"]
    return max((e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"), default=0)


# every optimizer (AdaShift with both kinds of its phase B), and SAM's and ASAM's compiled tensor work, with one
# thread (as benchmarks/quality.py's runs), AdaShift's with two as well
_EVERY_KERNEL = [*(pytest.param(n, {"n": 2} if n == "adashift" else {}, 1, id=n) for n in sorted(hf_adasam.OPTIMIZERS)),
                 pytest.param("adashift", {"n": 2, "phi": "none"}, 1, id="adashift_phi_none"),
                 pytest.param("sam", {}, 1, id="sam"), pytest.param("sam", {"adaptive": True}, 1, id="asam"),
                 pytest.param("adashift", {"n": 2}, 2, id="adashift_2_threads")]


def _stepper(name: str, knobs: dict, params: list[torch.Tensor]):
    """One step of ``name``'s compiled kernels on ``params`` (their gradients set): an optimizer's, or SAM's
    perturbation and restore."""
    if name != "sam":
        kwargs = {**hf_adasam.OPTIMIZERS[name].bench_kwargs(), **knobs}
        return hf_adasam.create_optimizer(name, params, impl="compiled", **kwargs).step
    pert = Perturbation(0.05, impl="compiled", **knobs)
    grads = [p.grad for p in params]

    @torch.no_grad()
    def step() -> None:
        pert.perturb(params, grads, pert.grad_norm(grads))
        pert.restore(params)

    return step


@pytest.mark.slow
@pytest.mark.parametrize("name, knobs, threads", _EVERY_KERNEL)
def test_a_kernel_recompiled_on_a_bucket_without_rows_allocates_no_bucket_sized_buffer(
        name: str, knobs: dict, threads: int, monkeypatch, tmp_path) -> None:
    """After ``torch._dynamo.reset()`` the next call of each kernel is on a bucket of tensors under 16 elements (no
    whole row), in a new inductor disk cache (nothing compiled before is reused); then, on a 4.2M-element bucket, a
    step holds less than an eighth of the bucket allocated at any time: the element-wise math is one loop over the
    rows (each element read, computed and written in one iteration). Compiled on such a bucket's own sizes,
    inductor split it into a loop per result with an ``[R, C]`` buffer each (17 MB each here; AdaShift's 90 MB at
    22.7M parameters took 22,156 page faults a step, 64-68 ms instead of 16)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        small = [torch.randn(s, generator=g).requires_grad_() for s in [(3, 4), (5,), (7,)]]
        _set_grads(small, 0)
        step = _stepper(name, knobs, small)
        for _ in range(3):  # AdaShift's phase B from its third step (n = 2)
            step()
        monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
        torch._dynamo.reset()
        step()
        params = [torch.randn(s, generator=g).requires_grad_() for s in [(1024, 1024)] * 4 + [(1024,), (5,)]]
        bucket = sum(p.numel() * p.element_size() for p in params)
        _set_grads(params, 0)
        step = _stepper(name, knobs, params)
        for _ in range(3):
            step()
        peak = _peak_allocated(step, tmp_path / "trace.json")
    finally:
        torch.set_num_threads(before)
    assert peak < bucket / 8, f"{name} {knobs}: a step held {peak} bytes allocated at once; the bucket is {bucket}"
