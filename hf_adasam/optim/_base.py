"""Machinery shared by every hf-adasam optimizer.

Each optimizer module follows ``torch.optim``'s layout: a functional kernel with a
single-tensor path (a plain loop, the reference) and a multi-tensor path built from
``torch._foreach_*`` ops, plus a small ``Optimizer`` class that owns param groups and state.
The third implementation, ``"compiled"``, is the multi-tensor kernel run through
``torch.compile``: inductor fuses each tensor's chain of element-wise ops into one loop (C++ on
CPU, Triton on CUDA), so a step reads and writes each state buffer once, as a fused optimizer does.

Sharded parameters (FSDP2's DTensors): the state is created like the parameter (DTensors, as
``torch.optim``'s under FSDP2, so FSDP2's checkpointing sees it), and every kernel, in every impl, runs on
the local shards (``to_local()``: plain tensors, so ``compiled`` compiles them as usual). Element-wise
updates need nothing more; a statistic over a whole tensor or over all parameters is made whole by an
all-reduce over the shards (:mod:`hf_adasam.sharding`) before the kernel uses it (AdaShift's φ, SET-Adam's
cosine and minimum, Adai's v̄). The first sharded step logs what it does.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from .._logging import logger
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


@functools.cache
def compiled(fn: Callable[..., None]) -> Callable[..., None]:
    """``fn`` under ``torch.compile``: one compiled object per kernel, shared by all instances."""
    # Trainer's decay/no-decay groups, several optimizers in one process and the occasional
    # bucket of params that skipped a step each need their own graph; dynamo's default limit
    # of 8 would silently drop a busy process back to eager.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(fn, fullgraph=True, dynamic=False)


def run_kernel(
    impl: str,
    single: Callable[..., None],
    multi: Callable[..., None],
    tensors: Sequence[list[Tensor]],
    hyper: dict[str, Any],
) -> None:
    """Run one of an algorithm's kernels on lists of tensors.

    ``"compiled"`` compiles the *single-tensor* kernel: dynamo unrolls its loop and inductor fuses
    each tensor's ops into one pass. Float hyperparameters go in as 0-d tensors there, because a
    Python float is baked into the graph and a scheduled lr would recompile every step. So a
    single-tensor kernel must accept floats or 0-d tensors alike and must not branch on them.

    0-d tensors of the lists (a scalar parameter, AdaShift's per-tensor v, Adai's running sum) enter
    the compiled kernel as 1-element views: torch 2.13's inductor drops in-place writes to a 0-d
    float64 CPU input (the write is silently lost; float32 is unaffected). A kernel that cannot be
    compiled (dynamo or inductor raise while tracing, before anything ran) falls back to the foreach
    kernel, which computes the same update, with a warning that says why.
    """
    if impl == "single":
        single(*tensors, **hyper)
    elif impl == "foreach" or single in _COMPILE_FAILED:
        multi(*tensors, **hyper)
    else:
        as_tensors = {k: torch.tensor(v, dtype=torch.float64) if type(v) is float else v for k, v in hyper.items()}
        lists = [[t.view(1) if t.dim() == 0 else t for t in ts] for ts in tensors]
        if single not in _ANNOUNCED:
            _announce_compile(single, tensors[0])
        try:
            compiled(single)(*lists, **as_tensors)
        except _COMPILE_ERRORS as err:  # raised while tracing/compiling, before anything ran
            _COMPILE_FAILED.add(single)
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            warnings.warn(
                f"hf-adasam: {single.__module__}.{single.__name__} could not be compiled ({type(err).__name__}: "
                f"{reason}); this process uses the eager foreach kernel for it, which computes the same update. "
                f"Set {IMPL_ENV}=foreach to skip compiling.",
                RuntimeWarning,
                stacklevel=4,
            )
            multi(*tensors, **hyper)


# Raised by dynamo/inductor before the graph runs: a kernel it cannot trace (e.g. DTensor shards), a
# backend failure, or the recompile limit (64 graphs of one kernel: param-group shapes x dtypes x knobs).
_COMPILE_ERRORS = (torch._dynamo.exc.TorchDynamoException, torch._dynamo.exc.FailOnRecompileLimitHit)
# kernels whose first compilation this process has announced
_ANNOUNCED: set[Callable[..., None]] = set()


def _announce_compile(single: Callable[..., None], params: Sequence[Tensor]) -> None:
    """One line, the first time a kernel compiles in this process: what, roughly how long, how to skip it."""
    _ANNOUNCED.add(single)
    n = len(params)
    kind = f"{params[0].dtype}, {params[0].device.type}".replace("torch.", "") if n else ""
    # 2-core CPU, cold cache: 0.3-0.9 s per tensor (MiniLM's 103 tensors: 31 s AdaSAM, 83 s Adai, 93 s SET-Adam)
    logger.info(
        "hf-adasam: compiling the %s kernel for %d tensors (%s) with torch.compile: roughly %d-%d s on a 2-core CPU "
        "the first time, less on a GPU host, seconds once inductor's disk cache has it; each further param group "
        "shape or dtype compiles again. %s=foreach skips compiling.",
        single.__name__.removeprefix("_single_tensor_"), n, kind, max(1, round(0.3 * n)), max(3, round(0.9 * n)),
        IMPL_ENV,
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
            logger.info("hf-adasam: %s on sharded parameters (FSDP2 DTensors): the %s kernels run on each rank's "
                        "shards; %s", type(self).__name__, self.impl, self.sharded_statistics)

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
