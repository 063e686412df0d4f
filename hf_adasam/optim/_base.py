"""Machinery shared by every hf-adasam optimizer.

Each optimizer module follows ``torch.optim``'s layout: a functional kernel with a
single-tensor path (a plain loop, the reference) and a multi-tensor path built from
``torch._foreach_*`` ops, plus a small ``Optimizer`` class that owns param groups and state.
The third implementation, ``"compiled"``, is the multi-tensor kernel run through
``torch.compile``: inductor fuses each tensor's chain of element-wise ops into one loop (C++ on
CPU, Triton on CUDA), so a step reads and writes each state buffer once, as a fused optimizer does.
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

Impl = Literal["compiled", "foreach", "single"]
IMPLS: tuple[str, ...] = ("compiled", "foreach", "single")
IMPL_ENV = "HF_ADASAM_IMPL"


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
    """
    if impl == "single":
        single(*tensors, **hyper)
    elif impl == "foreach":
        multi(*tensors, **hyper)
    else:
        hyper = {k: torch.tensor(v, dtype=torch.float64) if type(v) is float else v for k, v in hyper.items()}
        compiled(single)(*tensors, **hyper)


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

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any], impl: str | None = None) -> None:
        self.impl = resolve_impl(impl)
        super().__init__(params, defaults)

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
        return [[self.state[p][n] for p in params] for n in names]

    def update_bucket(self, group: dict[str, Any], params: list[Tensor], step: int) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for (_, _, step), params in self.gather(group).items():
                self.update_bucket(group, params, step)
        return loss
