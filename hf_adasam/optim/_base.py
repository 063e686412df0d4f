"""Machinery shared by every hf-adasam optimizer.

Each optimizer module follows ``torch.optim``'s layout: a functional kernel with a
single-tensor path (a plain loop, the reference) and a multi-tensor path built from
``torch._foreach_*`` ops, plus a small ``Optimizer`` class that owns param groups and state.
The third implementation, ``"compiled"``, is the single-tensor kernel compiled once by ``torch.compile``
with dynamic shapes and applied to the parameters a few at a time, each seen as a 1-D tensor
(:func:`run_kernel`): inductor fuses each tensor's chain of element-wise ops into one loop (C++ on CPU,
Triton on CUDA), so a step reads and writes each state buffer once, as a fused optimizer does, and one
compilation serves any model.

Sharded parameters (FSDP2's DTensors): the state is created like the parameter (DTensors, as
``torch.optim``'s under FSDP2, so FSDP2's checkpointing sees it), and every kernel, in every impl, runs on
the local shards (``to_local()``: plain tensors, so ``compiled`` compiles them as usual). Element-wise
updates need nothing more; a statistic over a whole tensor or over all parameters is made whole by an
all-reduce over the shards (:mod:`hf_adasam.sharding`) before the kernel uses it (AdaShift's φ, SET-Adam's
cosine and minimum, Adai's v̄). The first sharded step logs what it does.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from .._logging import is_main_process, logger
from ..sharding import Reduction, is_sharded, local, reduction_for

Impl = Literal["compiled", "foreach", "single"]
IMPLS: tuple[str, ...] = ("compiled", "foreach", "single")
IMPL_ENV = "HF_ADASAM_IMPL"
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
    """``$HF_ADASAM_IMPL`` if set, else ``"compiled"`` where ``torch.compile`` can run."""
    impl = os.environ.get(IMPL_ENV, "").strip().lower() or "compiled"
    if impl not in IMPLS:
        raise ValueError(f"Invalid {IMPL_ENV}={impl!r}; allowed values are {', '.join(IMPLS)}")
    return impl


def resolve_impl(impl: str | None) -> str:
    impl = default_impl() if impl is None else impl
    if impl not in IMPLS:
        raise ValueError(f"Invalid impl: {impl!r}; allowed values are {', '.join(IMPLS)}")
    if impl == "compiled" and not compile_supported():
        warnings.warn(
            "torch.compile is not usable here (no C++ compiler or unsupported platform); "
            "hf-adasam optimizers fall back to the eager foreach kernels",
            stacklevel=3,
        )
        impl = "foreach"
    return impl


@functools.cache
def compile_supported() -> bool:
    if not hasattr(torch, "compile") or os.environ.get("TORCHDYNAMO_DISABLE") == "1":
        return False
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception:
        return torch.cuda.is_available()
    return True


# tensors per compiled call: the graph holds GROUP copies of the kernel's loop (its compile time grows with it:
# on a 2-core CPU ~2 s a cold first step per 2 more) and each call costs ~180 us of dynamo/AOT/inductor wrappers,
# so a model of n tensors pays n / GROUP of them (MiniLM, 103 tensors: 52 calls, ~9 ms a step at 2:
# benchmarks/results/profile_step_22m.md). 2 keeps every optimizer's cold first step under 10 s
# (benchmarks/results/first_step.md)
GROUP = 2
# inductor settings of every kernel's compilation: a vectorised tail loop (the last < 16 elements of a tensor)
# is more C++ to compile per loop (~0.8 s of a cold first step), for a handful of elements
_INDUCTOR_OPTIONS = {"cpp.enable_loop_tail_vec": False}


@functools.cache
def compiled(fn: Callable[..., None], inductor: tuple[tuple[str, Any], ...] = ()) -> Callable[..., None]:
    """``fn`` under ``torch.compile`` with dynamic shapes: one graph per kernel, shared by all instances.

    The graph takes ``GROUP`` 1-D tensors per list, each of its own symbolic length, so one compilation serves
    every model: the step calls it on groups of the flattened parameters (:func:`_run_compiled`). ``inductor``:
    the kernel's own inductor settings, (name, value) pairs, in force whenever it compiles.
    """
    # a new dtype, device or knob that changes the graph (a None floor, AdaShift's phi) compiles once more; a
    # busy process (several optimizers, each dtype) must not hit dynamo's default limit of 8 and drop to eager
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(fn, fullgraph=True, dynamic=True, options={**_INDUCTOR_OPTIONS, **dict(inductor)})


def run_kernel(
    impl: str,
    single: Callable[..., None],
    multi: Callable[..., None],
    tensors: Sequence[list[Tensor]],
    hyper: dict[str, Any],
    *,
    shared: int = 0,
    sums: bool = False,
    inductor: tuple[tuple[str, Any], ...] = (),
) -> None:
    """Run one of an algorithm's kernels on lists of tensors.

    ``tensors`` are per-parameter lists (params, grads, state buffers), then ``shared`` lists whose tensors
    every parameter's update shares (Adai's running sum). A list-valued hyperparameter holds one tensor per
    parameter (whole-tensor statistics given under FSDP2). ``sums``: the kernel sums over a whole tensor.
    ``inductor``: the compiled kernel's own inductor settings, (name, value) pairs.

    ``"compiled"`` compiles the *single-tensor* kernel once, with dynamic shapes, and applies it to groups of
    ``GROUP`` parameters viewed as 1-D tensors (:func:`_run_compiled`); inductor fuses each tensor's chain of
    element-wise ops into one loop. So a single-tensor kernel must be element-wise apart from reductions over a
    whole tensor, accept floats or 0-d tensors alike for its scalars, and must not branch on them. A kernel
    that cannot be compiled (dynamo or inductor raise while tracing, before anything ran) falls back to the
    foreach kernel, which computes the same update, with a warning that says why.
    """
    if impl == "single":
        single(*tensors, **hyper)
    elif impl == "foreach" or single in _COMPILE_FAILED:
        multi(*tensors, **hyper)
    else:
        _run_compiled(single, multi, tensors, hyper, shared, SUM_MIN_LENGTH if sums else 2, inductor)


def _foreach_on(multi: Callable[..., None], tensors: Sequence[list[Tensor]], hyper: dict[str, Any], shared: int,
                idx: list[int]) -> None:
    """The foreach kernel on the parameters ``idx`` (their per-parameter lists; shared lists whole)."""
    if idx:
        cut = len(tensors) - shared
        multi(*[[ts[i] for i in idx] for ts in tensors[:cut]], *tensors[cut:],
              **{k: [v[i] for i in idx] if isinstance(v, list) else v for k, v in hyper.items()})


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


# A float32 sum compiled by inductor's C++ backend is blocked (chunks of 4096, for accuracy) only when the
# length exceeds 4096, and the graph is specialised on that: a kernel that sums over a tensor compiles for
# longer tensors only; shorter ones (biases, norms: a few percent of a model's elements) take its foreach twin
SUM_MIN_LENGTH = 4097
# the length of every tensor of the call that compiles a kernel: its size hints decide inductor's loop
# parallelisation, which must suit the large tensors
_TRACE_LENGTH = 1 << 16
# (kernel, device, dtypes, knobs) signatures compiled in this process
_TRACED: set[tuple[Any, ...]] = set()


def _run_compiled(
    single: Callable[..., None],
    multi: Callable[..., None],
    tensors: Sequence[list[Tensor]],
    hyper: dict[str, Any],
    shared: int,
    min_length: int,
    inductor: tuple[tuple[str, Any], ...],
) -> None:
    """The compiled single-tensor kernel over groups of ``GROUP`` parameters, each seen as a 1-D tensor.

    - Float hyperparameters go in as 0-d float64 tensors: a Python float would be baked into the graph, and a
      scheduled lr would recompile every step.
    - Each tensor enters as a 1-D alias of its memory (:func:`_flat`), a parameter and its state sharing one
      symbolic length; a one-element tensor (AdaShift's per-tensor v) is a length-1 alias (1-element, also
      because torch 2.13's inductor drops in-place writes to a 0-d float64 CPU input).
    - The graph is compiled by a first call on zero tensors of one large length (:data:`_TRACE_LENGTH`), not
      on the model's first group: the sizes seen when compiling decide which loops run in parallel.
    - The last group is padded with zero tensors of ``min_length`` (lengths 0 and 1 would be specialised).
    - Parameters the aliases cannot cover (memory not contiguous in some list, fewer than ``min_length``
      elements) take the foreach kernel: the same update.
    """
    n = len(tensors[0])
    per, common = tensors[: len(tensors) - shared], tensors[len(tensors) - shared :]
    listed = {k for k, v in hyper.items() if isinstance(v, list)}
    fits = [i for i in range(n) if tensors[0][i].numel() >= min_length and all(ts[i].is_contiguous() for ts in per)]
    rest = sorted(set(range(n)) - set(fits))
    scalars = {k: torch.tensor(v, dtype=torch.float64) if type(v) is float else v for k, v in hyper.items()}
    flat_common = [[_flat(t) for t in ts] for ts in common]
    fn = compiled(single, inductor)
    done = 0  # parameters of ``fits`` updated so far: after a failed compilation, foreach takes the others
    try:
        signature = (single, tensors[0][0].device, *(ts[0].dtype for ts in tensors),
                     *((k, None if v is None else type(v)) for k, v in scalars.items()))
        if fits and signature not in _TRACED:
            if single not in _ANNOUNCED:
                _announce_compile(single, tensors[0])
            templates = [_flat(ts[fits[0]]) for ts in per]
            with _compile_settings(tensors[0][0].device):
                fn(*[[_zeros(t, _TRACE_LENGTH) for _ in range(GROUP)] for t in templates],
                   *[[torch.zeros_like(t) for t in ts] for ts in flat_common],
                   **{k: [_zeros(_flat(v[fits[0]]), _TRACE_LENGTH) for _ in range(GROUP)] if k in listed else v
                      for k, v in scalars.items()})
            _TRACED.add(signature)
        for start in range(0, len(fits), GROUP):
            idx = fits[start : start + GROUP]
            pad = GROUP - len(idx)
            lists = [_padded([_flat(ts[i]) for i in idx], pad, min_length) for ts in per]
            args = {k: _padded([_flat(v[i]) for i in idx], pad, min_length) if k in listed else v
                    for k, v in scalars.items()}
            fn(*lists, *flat_common, **args)
            done += len(idx)
    except _COMPILE_ERRORS as err:  # raised while tracing/compiling a graph, before it ran
        _compile_failed(single, err)
        rest = sorted(rest + fits[done:])
    _foreach_on(multi, tensors, hyper, shared, rest)


def _flat(t: Tensor) -> Tensor:
    """``t``'s elements as a 1-D tensor on the same memory (``t`` contiguous): ``t`` itself if it is one.

    Not ``t.view(-1)``: dynamo guards a view's base, so bases of different ranks would recompile the graph.
    """
    if t.dim() == 1 and t._base is None and not t.requires_grad:  # (a parameter: guards would see requires_grad)
        return t
    return t.new_empty(0).set_(t.untyped_storage(), t.storage_offset(), (t.numel(),), (1,))


def _zeros(like: Tensor, length: int) -> Tensor:
    """Zeros standing in for ``like`` (1-D): ``length`` of them, or one where ``like`` is one element."""
    return torch.zeros(1 if like.numel() == 1 else length, dtype=like.dtype, device=like.device)


def _padded(ts: list[Tensor], pad: int, length: int) -> list[Tensor]:
    return ts + [_zeros(ts[0], length) for _ in range(pad)]


@contextlib.contextmanager
def _compile_settings(device: torch.device) -> Iterator[None]:
    """Settings for compiling our kernels, in force while the first call of a signature compiles its graph (a
    later recompilation, after a guard fails, compiles without them: only slower, not different).

    - No duck sizing: two parameters of a group that happen to share a length must not share a symbol, or
      the graph would be specialised to that coincidence and compile again for the next group.
    - On CPU, inductor's instruction-set probe is skipped (``cpp.vec_isa_ok``): in a process with a cold cache
      it compiles and loads a test program per candidate ISA (AVX512, AVX2, ...), ~7 s on a 2-core machine
      before our first kernel. The ISAs the CPU reports (torch reads /proc/cpuinfo) are used as they are; a
      compiler that cannot build them fails the compile, and the kernel falls back to foreach with a warning.
      The probe's cache is cleared afterwards, so the user's own ``torch.compile`` still probes as usual.
      (Private inductor settings; checked with torch 2.13.)
    """
    import torch.fx.experimental._config as fx_config
    from torch._inductor import config as inductor_config
    from torch._inductor import cpu_vec_isa

    probe = cpu_vec_isa.valid_vec_isa_list
    skip_probe = device.type == "cpu" and inductor_config.cpp.vec_isa_ok is None and probe.cache_info().currsize == 0
    with fx_config.patch(use_duck_shape=False), inductor_config.patch({"cpp.vec_isa_ok": True} if skip_probe else {}):
        try:
            yield
        finally:
            if skip_probe:
                probe.cache_clear()


# Raised by dynamo/inductor before the graph runs: a kernel it cannot trace (e.g. DTensor shards), a
# backend failure, or the recompile limit (64 graphs of one kernel: dtypes x devices x knobs).
_COMPILE_ERRORS = (torch._dynamo.exc.TorchDynamoException, torch._dynamo.exc.FailOnRecompileLimitHit)
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
class KernelOptimizer(torch.optim.Optimizer):
    """An optimizer whose step is a functional kernel over lists of tensors.

    Subclasses set ``state_buffers`` (names of per-parameter buffers created as ``zeros_like(p)``
    unless ``init_state`` is overridden) and implement ``update_bucket``. Parameters of a group are
    bucketed by (device, dtype, step count) so one kernel call sees tensors that share every
    scalar; in ordinary training every group is a single bucket.
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

    def gather(self, group: dict[str, Any]) -> dict[tuple[Any, ...], list[Tensor]]:
        """Params of ``group`` that have a gradient, bucketed by (device, dtype, next step)."""
        buckets: dict[tuple[Any, ...], list[Tensor]] = defaultdict(list)
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            state = self.state[p]
            if not state:
                self.init_state(p, state, group)
            state["step"] += 1
            buckets[(p.device, p.dtype, state["step"])].append(p)
        return buckets

    def buffers(self, params: list[Tensor], *names: str) -> list[list[Tensor]]:
        """The state buffers ``names`` of ``params``, as the kernels take them (local shards under FSDP2)."""
        return [[local(self.state[p][n]) for p in params] for n in names]

    def lists(self, params: list[Tensor], *names: str) -> list[list[Tensor]]:
        """(params, grads, *buffers) as the kernels take them: local shards under FSDP2, else the tensors."""
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
                            "rank's shards; %s", type(self).__name__, self.impl, self.sharded_statistics)

    def update_bucket(self, group: dict[str, Any], params: list[Tensor], step: int) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            hyper = scalar_hyper(group)
            for (_, _, step), params in self.gather(group).items():
                self.say_if_sharded(params)
                self.update_bucket(hyper, params, step)
        return loss


def scalar_hyper(group: dict[str, Any]) -> dict[str, Any]:
    """``group`` as the kernels read it: a tensor ``lr`` (as torch.optim's Adam family accepts, and
    schedulers update in place) becomes its Python float for this step."""
    lr = group["lr"]
    return {**group, "lr": float(lr)} if isinstance(lr, Tensor) else group
