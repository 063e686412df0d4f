"""The two-pass sharpness-aware micro-step, shared by ``SAMTrainer`` and the plain-PyTorch ``SAM``.

One micro-batch (docs/algorithms.md#sam-and-asam, docs/algorithms.md#policies):

1. pass 1 at w into fresh gradients g (the accumulated gradients of earlier micro-batches are put
   aside, not copied);
2. the policy decides from ‖g‖² whether this micro-batch pays the second pass;
3. if so: e from g (SAM or ASAM), w ← w + e, pass 2 into fresh gradients g_sam, w restored
   bit-exactly from a saved copy; else the direction is g (or LookSAM's reuse of g_v);
4. the direction is added to the accumulated gradients, exactly as the base loop accumulates.

Data parallel: every pass runs without DDP's all-reduce; the caller all-reduces the accumulated
gradients once per optimizer step (``allreduce_grads``). Pass-1 gradients are averaged across ranks
only with ``sync_perturbation``; the policy always sees the replica-mean ‖g‖², so every rank takes
the same decision.

Sharded (FSDP2: the parameters are DTensors): each backward reduce-scatters, so every pass leaves each rank
its shard of the gradient *averaged* over all ranks, and the perturbation necessarily comes from the
averaged gradient (``sync_perturbation`` in effect, whatever the knob says). The step then works on the
local shards (:mod:`.sharding`): ‖g‖ from one all-reduce of the shards' sums of squares (identical on
every rank, so AE-SAM decides alike everywhere), e added to each shard in place, the shards restored bit
for bit from a sharded copy; nothing is all-reduced afterwards (FSDP already averaged).
"""

from __future__ import annotations

import contextlib
import functools
import math
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .._logging import logger
from ..sharding import Reduction, is_sharded, local, reduction_for, state_bytes
from .config import SAMConfig
from .perturbation import Perturbation
from .policies import Policy


@dataclass
class SAMStats:
    """Counters since the last log; summed over micro-batches."""

    micro_batches: int = 0
    second_passes: int = 0
    skipped: int = 0  # non-finite pass-1 gradient: no perturbation
    grad_norm_sum: float = 0.0
    perturbation_norm_sum: float = 0.0
    total_second_passes: int = 0
    total_micro_batches: int = 0

    def count_first_pass(self, grad_norm: Tensor, finite: bool) -> None:
        """One micro-batch's pass 1: ‖g‖ (unscaled), or a skip if ‖g‖² is not finite."""
        self.micro_batches += 1
        self.total_micro_batches += 1
        if finite:
            self.grad_norm_sum += float(grad_norm)
        else:
            self.skipped += 1

    def count_second_pass(self, perturbation_norm: float) -> None:
        self.second_passes += 1
        self.total_second_passes += 1
        self.perturbation_norm_sum += float(perturbation_norm)

    def pop_logs(self) -> dict[str, float]:
        if not self.micro_batches:
            return {}
        logs = {
            "sam_second_pass_fraction": self.second_passes / self.micro_batches,
            "sam_grad_norm": self.grad_norm_sum / self.micro_batches,
            "sam_skipped_perturbations": float(self.skipped),
        }
        if self.second_passes:
            logs["sam_perturbation_norm"] = self.perturbation_norm_sum / self.second_passes
        self.micro_batches = self.second_passes = self.skipped = 0
        self.grad_norm_sum = self.perturbation_norm_sum = 0.0
        return logs


@dataclass
class Gradient:
    """Pass 1's gradient g: the parameters that got one, their gradients, and the norms the step uses."""

    params: list[Tensor]
    grads: list[Tensor]  # g, the tensors themselves (pass 2 writes fresh ones into p.grad)
    reduce: Reduction  # global norms and dot products over shards under FSDP2, else local ones
    norm: Tensor  # ‖g‖ as the gradients stand (fp16: still multiplied by the loss scale); e is scale-free
    sq_norm: float  # ‖g‖² unscaled, the replica mean under DDP: the policy's statistic, alike on every rank

    @property
    def usable(self) -> bool:
        """Some parameter has a gradient and ‖g‖² is finite: the policy may decide."""
        return bool(self.grads) and math.isfinite(self.sq_norm)


@dataclass
class SAMStep:
    """Perturbation + policy + the micro-step that uses them."""

    perturbation: Perturbation
    policy: Policy
    sync_perturbation: bool = False
    # SAMTrainer: one perturbation per optimizer step from the whole accumulated batch (else per micro-batch)
    exact_accumulation: bool = False
    stats: SAMStats = field(default_factory=SAMStats)
    sharded: bool | None = None  # set at the first micro-step: the parameters are DTensors (FSDP2)

    @classmethod
    def from_config(cls, config: SAMConfig, *, total_steps: int = 1) -> SAMStep:
        """The step for a resolved config (``rho > 0``); ``total_steps`` is AE-SAM's horizon T."""
        return cls(Perturbation.from_config(config), Policy.from_config(config, total_steps),
                   config.sync_perturbation, config.exact_accumulation)

    def micro_step(
        self,
        params: list[Tensor],
        backward: Callable[[], Tensor] | Sequence[Callable[[], Tensor]],
        *,
        t: int,
        grad_scale: float = 1.0,
        no_sync: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> Tensor:
        """Run one micro-batch's passes; ``backward`` computes the loss at the current w and backprops it.

        A sequence of ``backward`` callables is one batch in several parts (exact accumulation): pass 1
        runs them all, the perturbation comes from their summed gradient, and pass 2 runs them all.
        Returns the pass-1 loss (summed over the parts). ``grad_scale`` is the fp16 GradScaler's scale
        (pass-1 gradients are unscaled by it for the policy's statistics; the SAM direction is scale-free).
        ``no_sync`` wraps each pass (DDP's ``no_sync``: the caller all-reduces once per optimizer step).

        In the terms of the reference SAM code (davda54/sam): ``perturb`` is its ``first_step`` (w ← w + e),
        ``restore`` the first half of its ``second_step`` (w back); the base optimizer's step, the other half,
        is the caller's, once the micro-batches of an optimizer step are accumulated.
        """
        parts = [backward] if callable(backward) else list(backward)
        with _accumulated_set_aside(params):  # earlier micro-batches' gradients; on exit p.grad = them + direction
            loss = self.first_pass(parts, no_sync)  # at w, into fresh gradients g
            g = self.gradient(params, grad_scale)  # g, ‖g‖, the policy's ‖g‖²; counted
            if not g.usable:  # no gradient, or a non-finite one (counted as skipped): the direction is g as it is
                return loss
            if self.policy.decide(t, g.sq_norm):  # a SAM step
                e_norm = self.perturbation.perturb(g.params, g.grads, g.norm, g.reduce)  # save w; w ← w + e
                try:
                    self.second_pass(g.params, parts, no_sync)  # at w + e, into fresh gradients g_sam
                finally:
                    self.perturbation.restore(g.params, g.reduce)  # w, bit for bit
                self.stats.count_second_pass(e_norm)
                self.policy.after_sam(g.grads, _grads_or_zeros(g.params), g.reduce)  # the direction is g_sam
            else:
                self.policy.reuse(g.grads, g.reduce)  # the direction is g (LookSAM: plus its stored g_v)
        return loss

    # -- the named steps of micro_step ---------------------------------------------------------------
    @staticmethod
    def first_pass(parts: list[Callable[[], Tensor]],
                   no_sync: Callable[[], contextlib.AbstractContextManager]) -> Tensor:
        """Pass 1: every part's forward and backward at w (into ``p.grad``, which the caller emptied); the loss."""
        with no_sync():
            return functools.reduce(operator.add, (part() for part in parts))

    def gradient(self, params: list[Tensor], grad_scale: float = 1.0) -> Gradient:
        """Pass 1's gradient g and its norms, counted in :attr:`stats`.

        DDP: g is averaged across ranks first with ``sync_perturbation``; else each rank keeps its own g and the
        policy's ‖g‖² is the mean of the ranks' (one scalar all-reduce), so every rank decides alike. FSDP2: g is
        already the average (each backward reduce-scatters), ‖g‖ is summed over the shards. fp16: ‖g‖ is divided
        by ``grad_scale`` for the statistics.
        """
        live = [p for p in params if p.grad is not None]
        grads = [p.grad for p in live]
        reduce = reduction_for(live)
        if self.sharded is None and live:
            self._announce(reduce.sharded)
        data_parallel = _distributed() and not reduce.sharded
        if data_parallel and self.sync_perturbation:
            _allreduce_mean(grads)
        norm = self.perturbation.grad_norm(grads, reduce)
        unscaled = norm / grad_scale
        sq_norm = unscaled.double() ** 2
        if data_parallel and not self.sync_perturbation:
            sq_norm = _allreduce_mean_scalar(sq_norm)
        g = Gradient(live, grads, reduce, norm, float(sq_norm))  # type: ignore[arg-type]
        self.stats.count_first_pass(unscaled, math.isfinite(g.sq_norm))
        return g

    @staticmethod
    def second_pass(params: list[Tensor], parts: list[Callable[[], Tensor]],
                    no_sync: Callable[[], contextlib.AbstractContextManager]) -> None:
        """Pass 2: the same parts at the perturbed w, into fresh gradients (pass 1's stay with the caller's g)."""
        for p in params:
            p.grad = None
        with no_sync():
            for part in parts:
                part()

    def _announce(self, sharded: bool) -> None:
        self.sharded = sharded
        if sharded and dist.get_rank() == 0:
            logger.info(
                "hf-adasam: parameters are sharded (FSDP2): each pass reduce-scatters, so the perturbation comes from "
                "the gradient averaged over all ranks (sync_perturbation=true in effect%s); ||g||, ||e|| and the "
                "policy's statistics are global (one all-reduce of the shards' sums), w is saved shard by shard",
                "" if self.sync_perturbation else ", whatever sam_sync_perturbation says")

    @property
    def state_bytes(self) -> int:
        """Bytes this rank holds for SAM's own state: the saved copy of w and LookSAM's g_v (shards under FSDP2)."""
        g_v = getattr(self.policy, "g_v", None)
        return self.perturbation.state_bytes + state_bytes(g_v)

    def state_dict(self) -> dict[str, Any]:
        return {"policy": self.policy.state_dict(), "total_second_passes": self.stats.total_second_passes,
                "total_micro_batches": self.stats.total_micro_batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.stats.total_second_passes = state.get("total_second_passes", 0)
        self.stats.total_micro_batches = state.get("total_micro_batches", 0)


@contextlib.contextmanager
def _accumulated_set_aside(params: list[Tensor]) -> Iterator[None]:
    """Put the accumulated gradients aside (not copied) for the body, then add the body's gradients into them."""
    accumulated = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        yield
    finally:
        acc, new = [], []
        for p, a in zip(params, accumulated, strict=True):
            if a is None:
                continue
            if p.grad is None:
                p.grad = a
            else:
                acc.append(local(a))  # FSDP2: add shard to shard
                new.append(local(p.grad))
                p.grad = a
        if acc:
            torch._foreach_add_(acc, new)


def _grads_or_zeros(params: list[Tensor]) -> list[Tensor]:
    """The parameters' gradients, zeros where a pass left none."""
    return [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _allreduce_mean_scalar(x: Tensor) -> Tensor:
    backend_device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    buf = x.detach().to(backend_device, torch.float64).reshape(1)
    dist.all_reduce(buf)
    return buf[0] / dist.get_world_size()


def _allreduce_mean(tensors: list[Tensor]) -> None:
    """Average ``tensors`` across ranks in place (one flat buffer per dtype/device)."""
    if not tensors:
        return
    world = dist.get_world_size()
    by_kind: dict[tuple[Any, Any], list[Tensor]] = {}
    for t in tensors:
        by_kind.setdefault((t.device, t.dtype), []).append(t)
    for group in by_kind.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat)
        flat.div_(world)
        torch._foreach_copy_(group, [c.view_as(t) for c, t in zip(flat.split([t.numel() for t in group]), group,
                                                                    strict=True)])


def allreduce_grads(params: list[Tensor]) -> None:
    """DDP's averaging of the accumulated gradients, done once per optimizer step (FSDP2's sharded gradients
    were averaged by its reduce-scatter: left alone)."""
    if _distributed():
        _allreduce_mean([p.grad for p in params if p.grad is not None and not is_sharded(p.grad)])
