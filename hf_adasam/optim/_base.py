"""Machinery shared by every hf-adasam optimizer.

Each optimizer module follows ``torch.optim``'s layout: a functional kernel with a
single-tensor path (a plain loop, the reference) and a multi-tensor path built from
``torch._foreach_*`` ops, plus a small ``Optimizer`` class that owns param groups and state.
The third implementation, ``"compiled"``, is the single-tensor kernel's math compiled once by
``torch.compile`` with dynamic shapes and run in one call over all of a bucket's tensors (:func:`run_kernel`,
:mod:`._arena`): inductor fuses the chain of element-wise ops into one loop over every tensor's elements (C++ on
CPU, Triton on CUDA), so a step reads and writes each state buffer once, as a fused optimizer does, with a
constant number of calls (one per kernel per bucket) whatever the number of tensors, and one compilation serves
any model.

Which one runs: ``impl`` (or ``$HF_ADASAM_IMPL``); the default ``"auto"`` (:class:`ImplChoice`) runs the
foreach kernels until the optimizer has spent :data:`AUTO_SWITCH_S` seconds in its steps, then the compiled
ones, so a run too short to repay a compile never compiles.

Sharded parameters (FSDP2's DTensors): the state is created like the parameter (DTensors, as
``torch.optim``'s under FSDP2, so FSDP2's checkpointing sees it), and every kernel, in every impl, runs on
the local shards (``to_local()``: plain tensors, so ``compiled`` compiles them as usual). Element-wise
updates need nothing more; a statistic over a whole tensor or over all parameters is made whole by an
all-reduce over the shards (:mod:`hf_adasam.sharding`) before the kernel uses it (AdaShift's φ, SET-Adam's
cosine and minimum, Adai's v̄). The first sharded step logs what it does.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from .._logging import HfAdasamWarning, is_main_process, logger
from ..sharding import Reduction, is_sharded, local, reduction_for
from . import _arena
from ._arena import PerTensor
from ._compile import (
    CompileNeeded,
    compile_errors,
    compile_settings,
    compile_unavailable,
    compiled,
    compiled_code_only,
    is_view,
    kernel_inductor_options,
    version_counter,
)

Impl = Literal["auto", "compiled", "foreach", "single"]
IMPLS: tuple[str, ...] = ("compiled", "foreach", "single")  # the three kernels
AUTO = "auto"  # the default: foreach, then compiled once the run has spent AUTO_SWITCH_S in steps
IMPL_ENV = "HF_ADASAM_IMPL"
# impl="auto" switches from the foreach kernels to the compiled ones once an optimizer has spent this long in its
# steps: about what compiling costs on a cold cache (benchmarks/results/first_step.md), so a run too short to
# repay a compile never compiles, and a longer one spends at most this much more than had it compiled at once
AUTO_SWITCH_S = 8.0
REAL_FLOAT_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


# ----------------------------------------------------------------------------------------------
# hyperparameter validation: one message format for every optimizer
# ----------------------------------------------------------------------------------------------
def check_range(
    name: str,
    value: float,
    low: float = 0.0,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` lies in the given interval."""
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.is_complex():
            raise ValueError(f"Invalid {name}: a tensor of shape {tuple(value.shape)} and dtype {value.dtype}; "
                             "allowed are a float or a one-element real tensor")
        value = float(value)
    ok = isinstance(value, (int, float)) and not math.isnan(value)
    ok = ok and (value > low if low_open else value >= low)
    ok = ok and (value < high if high_open else value <= high)
    if not ok:
        lo = "(" if low_open else "["
        hi = ")" if high_open or high == math.inf else "]"
        raise ValueError(f"Invalid {name}: {value!r}; allowed range is {lo}{low}, {high}{hi}")


def check_betas(name: str, betas: Sequence[float], n: int = 2) -> None:
    if not isinstance(betas, (tuple, list)) or len(betas) != n:
        raise ValueError(f"Invalid {name}: {betas!r}; expected a tuple of {n} floats in [0, 1)")
    for i, b in enumerate(betas):
        check_range(f"{name}[{i}]", b, 0.0, 1.0, high_open=True)


def check_common(lr: float, weight_decay: float, eps: float | None = None) -> None:
    check_range("lr", lr)
    check_range("weight_decay", weight_decay)
    if eps is not None:
        check_range("eps", eps)


# ----------------------------------------------------------------------------------------------
# choosing and building the kernel
# ----------------------------------------------------------------------------------------------
def default_impl() -> str:
    """``$HF_ADASAM_IMPL`` if set, else ``"auto"``."""
    impl = os.environ.get(IMPL_ENV, "").strip().lower() or AUTO
    if impl not in (AUTO, *IMPLS):
        raise ValueError(f"Invalid {IMPL_ENV}={impl!r}; allowed values are {', '.join((AUTO, *IMPLS))}")
    return impl


def resolve_impl(impl: str | None) -> str:
    impl = default_impl() if impl is None else impl
    if impl not in (AUTO, *IMPLS):
        raise ValueError(f"Invalid impl: {impl!r}; allowed values are {', '.join((AUTO, *IMPLS))}")
    why = compile_unavailable() if impl == "compiled" else None
    if why is not None:
        warnings.warn(f"{why}; hf-adasam optimizers run the eager foreach kernels (the same update)", HfAdasamWarning,
                      stacklevel=3)
        impl = "foreach"
    return impl


class ImplChoice:
    """The kernel an optimizer runs this step: its ``impl``, or for ``"auto"`` the foreach kernels until the
    optimizer has spent :data:`AUTO_SWITCH_S` seconds in its steps, then the compiled ones (where ``torch.compile``
    can run). A short run (a tiny model, a smoke test, a few hundred steps of a small one) never waits for a
    compile; a long run compiles once, early, and spends at most ``AUTO_SWITCH_S`` more than had it compiled at
    once. Time is host time (on CUDA, what the step takes to launch its kernels). Mixed into the optimizers."""

    impl: str

    @property
    def kernel_impl(self) -> str:
        if self.impl != AUTO:
            return self.impl
        return "compiled" if self.__dict__.get("_auto_compiled", False) else "foreach"

    @contextlib.contextmanager
    def timed_step(self) -> Iterator[None]:
        """Around a step's kernels: counts their time towards the automatic switch."""
        if self.impl != AUTO or self.__dict__.get("_auto_compiled", False):
            yield
            return
        if not _AUTO_SAID:
            _AUTO_SAID.append(True)
            if is_main_process():
                logger.info("hf-adasam: impl=auto: the optimizer runs its foreach kernels until it has spent %.0f s "
                            "in its steps, then compiles them once (a run too short to repay a compile never "
                            "compiles); %s=compiled or =foreach chooses.", AUTO_SWITCH_S, IMPL_ENV)
        start = time.perf_counter()
        yield
        spent = self.__dict__.get("_auto_spent", 0.0) + time.perf_counter() - start
        self._auto_spent = spent
        if _all_ranks_agree(spent >= AUTO_SWITCH_S) and _can_compile():
            self._auto_compiled = True
            if is_main_process():
                logger.info("hf-adasam: %s has spent %.1f s in foreach steps: compiling its kernels (impl=auto)",
                            type(self).__name__, spent)


_AUTO_SAID: list[bool] = []  # the auto rule is logged once per process


def _all_ranks_agree(switch: bool) -> bool:
    """Whether any rank of a distributed job wants to switch: then all switch at the same step. The compiled and
    foreach kernels round differently, so ranks that switched at different steps would leave DDP's replicas
    unequal. One all-reduce of one number per step, in distributed jobs only, until the switch."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return switch
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([float(switch)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def _can_compile() -> bool:
    """For impl="auto": whether to switch to the compiled kernels; where not, said once, and foreach stays."""
    why = compile_unavailable()
    if why is not None and not _AUTO_SAID_NO:
        _AUTO_SAID_NO.append(True)
        warnings.warn(f"impl=auto stays on the foreach kernels: {why}", HfAdasamWarning, stacklevel=4)
    return why is None


_AUTO_SAID_NO: list[bool] = []


def run_kernel(
    impl: str,
    single: Callable[..., None],
    multi: Callable[..., None],
    tensors: Sequence[list[Tensor]],
    hyperparams: dict[str, Any],
    *,
    shared: int = 0,
    stores: Sequence[tuple[list[Tensor], PerTensor]] = (),
    inductor: tuple[tuple[str, Any], ...] = (),
) -> None:
    """Run one of an algorithm's kernels on lists of tensors.

    ``tensors`` are per-parameter lists (params, grads, state buffers), then ``shared`` lists whose tensors
    every parameter's update shares (Adai's running sum). A list-valued hyperparameter holds one tensor per
    parameter (a state buffer passed by name, or a one-element per-tensor statistic); a :class:`PerTensor`
    one number per parameter. ``inductor``: the compiled kernel's own inductor settings, (name, value) pairs.

    ``"compiled"`` runs the *single-tensor* kernel's math in one compiled call over all the tensors
    (:mod:`._arena`): the kernel sees two blocks per list, every tensor's rows of ``C`` elements and the tail
    elements, and inductor fuses the chain of element-wise ops into one loop over them. So a single-tensor
    kernel must be element-wise (a sum over a whole block is a sum over all of its tensors), accept floats or
    0-d tensors alike for its scalars, broadcast a per-tensor value given as a ``[rows, 1]`` block, and not
    branch on tensor values. ``stores``: (one-element tensors, :class:`PerTensor`) pairs, set after the kernel
    (per-tensor state the kernel reads as a :class:`PerTensor` and must not read as a list). Parameters whose
    tensors the arena cannot take (not contiguous somewhere, empty) take the foreach kernel, which computes the
    same update; so does a kernel that cannot be compiled (dynamo or inductor raise before anything ran), with a
    warning that says why.
    """
    if impl == "single":
        single(*tensors, **_unpacked(hyperparams))
        _store(stores)
    elif impl == "foreach" or single in _COMPILE_FAILED:
        multi(*tensors, **_unpacked(hyperparams))
        _store(stores)
    else:
        _run_compiled(single, multi, tensors, hyperparams, shared, stores, inductor)


def _store(stores: Sequence[tuple[list[Tensor], PerTensor]], idx: list[int] | None = None) -> None:
    """Eagerly, the stores of the parameters ``idx`` (all: None)."""
    for targets, values in stores:
        if idx is None:
            torch._foreach_copy_(targets, values.values_list())
        elif idx:
            torch._foreach_copy_([targets[i] for i in idx], values.values[idx].unbind())


def _unpacked(hyperparams: dict[str, Any]) -> dict[str, Any]:
    """``hyperparams`` as the single-tensor and foreach kernels take them: a :class:`PerTensor` as 0-d tensors."""
    if not any(isinstance(v, PerTensor) for v in hyperparams.values()):
        return hyperparams
    return {k: v.values_list() if isinstance(v, PerTensor) else v for k, v in hyperparams.items()}


def _foreach_on(multi: Callable[..., None], tensors: Sequence[list[Tensor]], hyperparams: dict[str, Any], shared: int,
                idx: list[int]) -> None:
    """The foreach kernel on the parameters ``idx`` (their per-parameter lists; shared lists whole)."""
    if not idx:
        return
    cut = len(tensors) - shared
    if len(idx) == len(tensors[0]):
        multi(*tensors, **_unpacked(hyperparams))
        return

    def pick(v: Any) -> Any:
        if isinstance(v, list):
            return [v[i] for i in idx]
        return PerTensor(v.values[idx]) if isinstance(v, PerTensor) else v

    multi(*[[ts[i] for i in idx] for ts in tensors[:cut]], *tensors[cut:],
          **_unpacked({k: pick(v) for k, v in hyperparams.items()}))


def _compile_failed(single: Callable[..., None], err: Exception) -> None:
    _COMPILE_FAILED.add(single)
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    warnings.warn(
        f"hf-adasam: {single.__module__}.{single.__name__} could not be compiled ({type(err).__name__}: "
        f"{reason}); this process uses the eager foreach kernel for it, which computes the same update. "
        f"Set {IMPL_ENV}=foreach to skip compiling.",
        RuntimeWarning,
        stacklevel=5,
    )


# (kernel graph, device, dtypes, knobs) signatures compiled in this process, and which lists each one writes
_TRACED: set[tuple[Any, ...]] = set()
_WRITTEN: dict[tuple[Any, ...], tuple[bool, ...]] = {}
# why lists could not be arenas, said once each
_NOT_ARENA_SAID: set[str] = set()
# the synthetic bucket a kernel's graph is compiled on: inductor decides from these sizes which results share a
# loop and which loops run in parallel, so they are those of a large bucket (rows of 1024; tails of a few elements)
_TRACE_NUMELS = (256 * 1024, 64 * 1024 + 5, 3)


def _on_compiled_code(run: Callable[[], Any], trace: Callable[[], Any]) -> Any:
    """``run()``, a compiled kernel's call on a real bucket, on code compiled on the synthetic bucket: where dynamo
    would compile on the real bucket's sizes (its graphs dropped by ``torch._dynamo.reset()``, or a guard that
    fails), ``trace()`` first compiles the graph on the synthetic bucket. Compiled on a bucket of tensors under 16
    elements (no rows), inductor split the element-wise math into a loop per result, a model-sized buffer each per
    step on every later bucket, and its disk cache, whose key has no sizes, served that code to later processes
    (AdaShift at 22.7M parameters: 64-68 ms a step instead of 16)."""
    try:
        with compiled_code_only():
            return run()
    except CompileNeeded:
        trace()
        return run()  # compiles on the real bucket only if the synthetic bucket's graph cannot take it


def _run_compiled(
    single: Callable[..., None],
    multi: Callable[..., None],
    tensors: Sequence[list[Tensor]],
    hyperparams: dict[str, Any],
    shared: int,
    stores: Sequence[tuple[list[Tensor], PerTensor]],
    inductor: tuple[tuple[str, Any], ...],
) -> None:
    """The single-tensor kernel in one compiled call over every parameter of the bucket (:mod:`._arena`).

    - Float hyperparameters go in as 0-d float64 tensors: a Python float would be baked into the graph, and a
      scheduled lr would recompile every step.
    - A shared tensor (Adai's sum) enters as a one-element alias (torch 2.13's inductor drops in-place writes to
      a 0-d float64 CPU input).
    - The graph is compiled by a call on a synthetic bucket (:data:`_TRACE_NUMELS`), never on the model's
      (:func:`_on_compiled_code`): the sizes seen when compiling decide which results share a loop and which loops
      run in parallel.
    - Parameters the arena cannot take (empty, or not contiguous in some list) take the foreach kernel.
    """
    why = compile_unavailable()
    if why is not None:
        _compile_failed(single, RuntimeError(why))
        multi(*tensors, **_unpacked(hyperparams))
        _store(stores)
        return
    n = len(tensors[0])
    cut = len(tensors) - shared
    named = [k for k, v in hyperparams.items() if isinstance(v, list)]
    lists = [*tensors[:cut], *(hyperparams[k] for k in named)]
    names = (*[None] * cut, *named)
    numels = [p.numel() for p in tensors[0]]
    every = [*lists, *(targets for targets, _ in stores)]
    if all(numels) and all(all(map(Tensor.is_contiguous, ts)) for ts in every):  # (the usual case, checked quickly)
        fits, rest = list(range(n)), []
    else:
        fits = [i for i in range(n) if numels[i] > 0 and all(ts[i].is_contiguous() for ts in every)]
        rest = [i for i in range(n) if i not in set(fits)]
    if fits:
        sub = (lambda ts: ts) if len(fits) == n else (lambda ts: [ts[i] for i in fits])
        vectors = {k: v.values if len(fits) == n else v.values[fits] for k, v in hyperparams.items()
                   if isinstance(v, PerTensor)}
        scalars = {k: torch.tensor(v, dtype=torch.float64) if type(v) is float else v for k, v in hyperparams.items()
                   if not isinstance(v, (list, PerTensor))}
        store_pairs = [(sub(targets), values.values if len(fits) == n else values.values[fits])
                       for targets, values in stores]
        try:
            _arena_call(single, [sub(ts) for ts in lists], names, sub(numels), tensors[cut:], vectors, scalars,
                        hyperparams, store_pairs, inductor)
        except _arena.NotArena as err:
            _say_not_arena(single, err)
            rest = list(range(n))
        except compile_errors() as err:  # raised while tracing/compiling a graph, before it ran
            _compile_failed(single, err)
            rest = list(range(n))
    _foreach_on(multi, tensors, hyperparams, shared, rest)
    _store(stores, rest)


def _say_not_arena(fn: Callable[..., Any], err: Exception) -> None:
    if str(err) not in _NOT_ARENA_SAID:
        _NOT_ARENA_SAID.add(str(err))
        warnings.warn(f"hf-adasam: {fn.__name__} runs its foreach kernel on a bucket with {err} (the compiled "
                      "kernel updates every tensor of a bucket in place in one call)", RuntimeWarning, stacklevel=6)


def _kinds(lists: Sequence[Sequence[Tensor]], numels: Sequence[int]) -> tuple[str, ...]:
    kinds = []
    numels = list(numels)
    for ts in lists:
        sizes = list(map(Tensor.numel, ts))
        if sizes == numels:
            kinds.append(_arena.ELEM)
        elif sizes == [1] * len(sizes):
            kinds.append(_arena.SCALAR)
        else:
            raise _arena.NotArena("a per-parameter list whose tensors are neither the parameters' size nor one element")
    return tuple(kinds)


def _signature(fn: Callable[..., Any], device: torch.device, *parts: Any, scalars: dict[str, Any]) -> tuple[Any, ...]:
    """What a compiled graph is specialised on: the kernel, device, list kinds and dtypes, knobs (Python values)."""
    return (fn, device, *parts, tuple((k, type(v), None if isinstance(v, Tensor) else v) for k, v in scalars.items()
                                      if not isinstance(v, Tensor) or v.dim() != 0 or v.dtype != torch.float64))


def _arena_call(single: Callable[..., None], lists: list[list[Tensor]], names: tuple[str | None, ...],
                numels: list[int], common: Sequence[list[Tensor]], vectors: dict[str, Tensor],
                scalars: dict[str, Any], hyperparams: dict[str, Any], stores: list[tuple[list[Tensor], Tensor]],
                inductor: tuple[tuple[str, Any], ...]) -> None:
    device = lists[0][0].device
    kinds = _kinds(lists, numels)
    dtypes = tuple(ts[0].dtype for ts in lists)
    shared_dtypes = tuple(t.dtype for ts in common for t in ts)
    store_dtypes = tuple((t[0].dtype, v.dtype) for t, v in stores)
    sig = _signature(single, device, kinds, names, dtypes, shared_dtypes, store_dtypes,
                     tuple((k, v.dtype) for k, v in vectors.items()), scalars=scalars)
    written = _WRITTEN.get(sig)
    if written is None:
        written = _WRITTEN[sig] = _written_lists(single, kinds, names, dtypes, shared_dtypes, hyperparams, device)
    if any(w and k != _arena.ELEM for w, k in zip(written, kinds, strict=True)):
        raise RuntimeError(f"hf-adasam internal error: {single.__name__} writes a per-tensor scalar list; the arena "
                           "graph writes only element lists (per-tensor values are stored from a PerTensor input)")
    fn = compiled(_arena.elementwise_graph(single, kinds, names, written),
                  kernel_inductor_options(inductor, dtypes, device))
    shared_flat = [[_flat(t) for t in ts] for ts in common]

    def call(lists: list[list[Tensor]], numels: Sequence[int], shared: list[list[Tensor]], vectors: dict[str, Tensor],
             stores: list[tuple[list[Tensor], Tensor]]) -> None:
        lay = _arena.layout(tuple(numels), device)
        ar, rows_at, tail_at = _arena.prepared(lists, written, kinds, numels, lay, device)
        st = _arena.arenas([t for t, _ in stores], [True] * len(stores), 1, device) if stores else None
        with compile_settings(device):
            fn(ar.reads, ar.writes, rows_at, tail_at, (lay.tid_rows, lay.start_rows, lay.tid_tail, lay.pos_tail),
               shared, vectors, scalars, st.writes if st else [], st.offsets if st else ar.offsets[:0],
               [v for _, v in stores])

    def trace() -> None:
        """The call on the synthetic bucket: zeros of each list's kind and dtype (its writes land in these zeros)."""
        m = len(_TRACE_NUMELS)
        trace_vectors = {k: torch.zeros(m, dtype=v.dtype, device=device) for k, v in vectors.items()}
        # a stored value that is also a vector input is the same tensor in the trace too (dynamo guards on it)
        same = {id(v): trace_vectors[k] for k, v in vectors.items()}
        call([[torch.zeros(t if k == _arena.ELEM else 1, dtype=d, device=device) for t in _TRACE_NUMELS]
              for k, d in zip(kinds, dtypes, strict=True)], _TRACE_NUMELS,
             [[torch.zeros_like(t) for t in ts] for ts in shared_flat], trace_vectors,
             [([torch.zeros(1, dtype=t[0].dtype, device=device) for _ in range(m)],
               same.get(id(v), torch.zeros(m, dtype=v.dtype, device=device))) for t, v in stores])

    if sig not in _TRACED:
        if single not in _ANNOUNCED:
            _announce_compile(single, lists[0])
        trace()
        _TRACED.add(sig)
    _on_compiled_code(lambda: call(lists, numels, shared_flat, vectors, stores), trace)


def run_reduction(fn: Callable[..., Any], lists: Sequence[Sequence[Tensor]], kinds: tuple[str, ...],
                  scalars: dict[str, Any], inductor: tuple[tuple[str, Any], ...] = ()) -> Any:
    """Per-tensor statistics of ``lists`` (per-parameter lists of the given kinds: :data:`._arena.ELEM`, the
    parameter's size, or :data:`._arena.SCALAR`, one element) in one compiled call: ``fn(blocks, lay, numels,
    **scalars)`` (:func:`._arena.reduction_graph`) returns ``[N]`` tensors. ``None`` where the arena cannot take
    these lists (an empty or non-contiguous tensor, as the element-wise kernels' foreach fallback; other reasons
    are said once) or ``fn`` cannot be compiled (said once); the caller then computes them with its foreach kernel.
    """
    if fn in _COMPILE_FAILED:
        return None
    why = compile_unavailable()
    if why is not None:
        _compile_failed(fn, RuntimeError(why))
        return None
    device = lists[0][0].device
    numels = [t.numel() for t in lists[0]]
    if not all(numels) or not all(t.is_contiguous() for ts in lists for t in ts):
        return None
    try:
        scalars = {k: torch.tensor(v, dtype=torch.float64) if type(v) is float else v for k, v in scalars.items()}
        sig = _signature(fn, device, kinds, tuple(ts[0].dtype for ts in lists), scalars=scalars)
        graph = compiled(_arena.reduction_graph(fn),
                         kernel_inductor_options(inductor, tuple(ts[0].dtype for ts in lists), device))

        def call(lists: Sequence[Sequence[Tensor]], numels: Sequence[int]) -> Any:
            lay = _arena.layout(tuple(numels), device)
            ar, rows_at, tail_at = _arena.prepared(lists, [False] * len(lists), kinds, numels, lay, device)
            with compile_settings(device):
                return graph(ar.reads, kinds, ar.offsets, rows_at, tail_at,
                             (lay.tid_rows, lay.start_rows, lay.tid_tail, lay.pos_tail),
                             torch.tensor(numels, dtype=torch.int64).to(device), scalars)

        def trace() -> Any:
            return call([[torch.zeros(t if k == _arena.ELEM else 1, dtype=ts[0].dtype, device=device)
                          for t in _TRACE_NUMELS] for k, ts in zip(kinds, lists, strict=True)], _TRACE_NUMELS)

        if sig not in _TRACED:
            if fn not in _ANNOUNCED:
                _announce_compile(fn, lists[0])
            trace()
            _TRACED.add(sig)
        return _on_compiled_code(lambda: call(lists, numels), trace)
    except _arena.NotArena as err:
        _say_not_arena(fn, err)
    except compile_errors() as err:
        _compile_failed(fn, err)
    return None


def _written_lists(single: Callable[..., None], kinds: Sequence[str], names: Sequence[str | None],
                   dtypes: Sequence[torch.dtype], shared_dtypes: Sequence[torch.dtype], hyperparams: dict[str, Any],
                   device: torch.device) -> tuple[bool, ...]:
    """Which of the lists ``single`` writes: it runs once, eagerly, on one dummy parameter of two elements, and
    a list was written if its tensor's version counter moved (kernels branch on knobs, never on tensor values)."""
    dummies = [torch.zeros(2 if k == _arena.ELEM else 1, dtype=d, device=device)
               for k, d in zip(kinds, dtypes, strict=True)]
    versions = [version_counter(t) for t in dummies]
    args = {k: [torch.zeros((), dtype=v.values.dtype, device=device)] if isinstance(v, PerTensor) else v
            for k, v in hyperparams.items()}
    args.update({n: [t] for t, n in zip(dummies, names, strict=True) if n is not None})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        single(*[[t] for t, n in zip(dummies, names, strict=True) if n is None],
               *[[torch.zeros(1, dtype=d, device=device)] for d in shared_dtypes], **args)
    return tuple(version_counter(t) != v for t, v in zip(dummies, versions, strict=True))


def _flat(t: Tensor) -> Tensor:
    """``t``'s elements as a 1-D tensor on the same memory (``t`` contiguous): ``t`` itself if it is one.

    Not ``t.view(-1)``: dynamo guards a view's base, so bases of different ranks would recompile the graph.
    """
    if t.dim() == 1 and not is_view(t) and not t.requires_grad:  # (a parameter: guards would see requires_grad)
        return t
    return t.new_empty(0).set_(t.untyped_storage(), t.storage_offset(), (t.numel(),), (1,))


# kernels whose first compilation this process has announced
_ANNOUNCED: set[Callable[..., None]] = set()
# what _announce_compile promises for a cold cache (benchmarks/first_step.py measures it)
COLD_COMPILE_ESTIMATE = "3-10 s on a 2-core CPU"


def _announce_compile(single: Callable[..., None], params: Sequence[Tensor]) -> None:
    """One line, the first time a kernel compiles in this process: what, roughly how long, how to skip it."""
    _ANNOUNCED.add(single)
    if not is_main_process():  # once per job, not once per rank under torchrun
        return
    kind = f"{params[0].dtype}, {params[0].device.type}".replace("torch.", "") if params else ""
    logger.info(
        "hf-adasam: compiling the %s kernel (%s) with torch.compile, once for any model size: roughly %s the "
        "first time, ~2 s once inductor's disk cache has it; %s=foreach skips compiling.",
        single.__name__.removeprefix("_single_tensor_"), kind, COLD_COMPILE_ESTIMATE, IMPL_ENV,
    )


# kernels whose compilation failed in this process: they run their foreach twin from then on
_COMPILE_FAILED: set[Callable[..., None]] = set()


def denominator_floor(dtype: torch.dtype, smallest_denominator: float) -> float:
    """The floor a kernel puts under a denominator ~sqrt(v) in ``dtype``: 0 (none) when the formula's own
    smallest denominator (from ε) is a normal number of ``dtype``, else the square root of the dtype's
    smallest positive (subnormal) number.

    ε = 1e-8 (and ε² = 1e-16) underflow to 0 in float16, so an always-zero coordinate would be 0/0, and a
    coordinate whose v = (1-β2) g² underflowed to 0 would step by m/0. The floor acts only where v is 0
    (any representable v > 0 has sqrt(v) above it); such a coordinate then steps by at most about
    (1-β1)/sqrt(1-β2) lr, Adam's usual first-step bound. In float32, bfloat16 and float64 with the
    default ε the floor is 0 and the kernel computes exactly the formula.
    """
    info = torch.finfo(dtype)
    return 0.0 if smallest_denominator >= info.tiny else math.sqrt(info.tiny * info.eps)


def guard_trainers_if_loaded() -> None:
    """Where Transformers' Trainer is already imported, make sure every Trainer refuses an optimizer that needs SAM
    unless a SAM step runs it (hf_adasam.transformers_integration's guard; see its registration module). Imports
    nothing when Transformers is not in use, so ``import hf_adasam`` and a plain PyTorch loop stay Transformers-free."""
    if "transformers.trainer" in sys.modules:
        from ..transformers_integration import register

        register()


# ----------------------------------------------------------------------------------------------
# the base class
# ----------------------------------------------------------------------------------------------
class KernelOptimizer(ImplChoice, torch.optim.Optimizer):
    """An optimizer whose step is a functional kernel over lists of tensors.

    Subclasses set ``state_buffers`` (names of per-parameter buffers created as ``zeros_like(p)``
    unless ``init_state`` is overridden) and implement ``update_bucket``. A step: the params with a gradient
    (:meth:`params_with_grad`) have their step counts incremented, are bucketed by (device, dtype, step count)
    so one kernel call sees tensors that share every scalar (in ordinary training every group is a single
    bucket), then :meth:`global_statistics` (a hook: statistics over all parameters, such as Adai's v̄) and
    :meth:`update_bucket` for each bucket.
    """

    state_buffers: tuple[str, ...] = ()
    # what the sharded path does beyond running the kernels on the shards (the start-up log line)
    sharded_statistics: str = "element-wise update: nothing to reduce"

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any], impl: str | None = None) -> None:
        self.impl = resolve_impl(impl)
        super().__init__(params, defaults)
        guard_trainers_if_loaded()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """``torch.optim.Optimizer.add_param_group``, refusing what the kernels cannot compute on."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        name = type(self).__name__
        for p in group["params"]:
            if p.dtype not in REAL_FLOAT_DTYPES:
                what = "complex" if p.is_complex() else "integer/bool" if not p.is_floating_point() else "unsupported"
                raise ValueError(
                    f"Invalid parameter dtype: {p.dtype} ({what}); {name} supports real floating-point parameters "
                    f"({', '.join(str(d).removeprefix('torch.') for d in REAL_FLOAT_DTYPES)}). For a complex "
                    "parameter optimize torch.view_as_real(p) as a real float parameter, or use torch.optim.AdamW"
                )
        lr = group.get("lr")
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError(f"Invalid lr: a tensor of shape {tuple(lr.shape)}; allowed are a float or a "
                             "one-element tensor (read once per step)")

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("impl", resolve_impl(None))

    def init_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        state["step"] = 0
        for name in self.state_buffers:
            state[name] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def params_with_grad(self, group: dict[str, Any]) -> list[Tensor]:
        """The params of ``group`` that have a gradient this step; a param seen for the first time gets its state
        (:meth:`init_state`). Sparse gradients are refused."""
        params = []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            state = self.state[p]
            if not state:
                self.init_state(p, state, group)
            params.append(p)
        return params

    def increment_step_counts(self, params: list[Tensor]) -> None:
        """``state["step"] += 1`` for each of ``params``: the step about to be taken is step ``state["step"]``."""
        for p in params:
            self.state[p]["step"] += 1

    def by_device_dtype_and_step(self, params: list[Tensor]) -> dict[tuple[Any, ...], list[Tensor]]:
        """``params`` grouped by (device, dtype, step count): the tensors of one group share every scalar of a
        kernel call (a step count differs where a parameter skipped steps without a gradient)."""
        buckets: dict[tuple[Any, ...], list[Tensor]] = defaultdict(list)
        for p in params:
            buckets[(p.device, p.dtype, self.state[p]["step"])].append(p)
        return buckets

    def step_buckets(self) -> list[Bucket]:
        """This step's buckets over every param group, after each parameter's step count is incremented."""
        buckets = []
        for group in self.param_groups:
            params = self.params_with_grad(group)
            self.increment_step_counts(params)
            hyperparams = step_hyperparams(group)
            buckets += [Bucket(hyperparams, bucket, step)
                        for (_, _, step), bucket in self.by_device_dtype_and_step(params).items()]
        return buckets

    def buffers(self, params: list[Tensor], *names: str) -> list[list[Tensor]]:
        """The state buffers ``names`` of ``params``, as the kernels take them (local shards under FSDP2)."""
        return [[local(self.state[p][n]) for p in params] for n in names]

    def kernel_inputs(self, params: list[Tensor], *names: str) -> list[list[Tensor]]:
        """The kernels' leading lists: params, their grads, then the state buffers ``names``; local shards under
        FSDP2, else the tensors themselves."""
        return [[local(p) for p in params], [local(p.grad) for p in params], *self.buffers(params, *names)]

    def reduction(self, params: list[Tensor]) -> Reduction:
        """How whole-tensor statistics of ``params`` are made whole: :data:`~hf_adasam.sharding.LOCAL` when
        unsharded; an all-reduce over the shards for DTensors."""
        return reduction_for(params)

    def say_if_sharded(self, params: list[Tensor]) -> None:
        """Once, at the first step on sharded parameters (FSDP2 DTensors): what the sharded path does."""
        if not getattr(self, "_said_sharded", False) and any(is_sharded(p) for p in params):
            self._said_sharded = True
            if is_main_process():
                logger.info("hf-adasam: %s on sharded parameters (FSDP2 DTensors): the %s kernels run on each "
                            "rank's shards; %s", type(self).__name__, self.kernel_impl, self.sharded_statistics)

    def global_statistics(self, buckets: list[Bucket]) -> dict[str, Any]:
        """Hook: statistics over every parameter of every group that each bucket's update needs (Adai's mean of
        v̂), computed after the step counts are incremented and before any update; passed to
        :meth:`update_bucket` as keyword arguments. None by default."""
        return {}

    def update_bucket(self, group: dict[str, Any], params: list[Tensor], step: int, **statistics: Any) -> None:
        """The update of one bucket: ``group`` its group's hyperparameters as the kernels read them this step
        (:func:`step_hyperparams`), ``step`` the step count after the increment, ``statistics``
        :meth:`global_statistics`'."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with self.timed_step():
            buckets = self.step_buckets()
            if buckets:
                self.say_if_sharded([p for bucket in buckets for p in bucket.params])
                statistics = self.global_statistics(buckets)
                for bucket in buckets:
                    self.update_bucket(bucket.group, bucket.params, bucket.step, **statistics)
        return loss


class Bucket(NamedTuple):
    """Parameters of one group that share device, dtype and step count: one call of each kernel."""

    group: dict[str, Any]  # the group's hyperparameters as the kernels read them this step (step_hyperparams)
    params: list[Tensor]
    step: int  # the step count after this step's increment (1 at the first step)


def step_hyperparams(group: dict[str, Any]) -> dict[str, Any]:
    """``group`` as the kernels read it: a tensor ``lr`` (as torch.optim's Adam family accepts, and
    schedulers update in place) becomes its Python float for this step."""
    lr = group["lr"]
    return {**group, "lr": float(lr)} if isinstance(lr, Tensor) else group
