r"""AdaShift (Zhou et al. ICLR 2019, "AdaShift: Decorrelation and Convergence of Adaptive Learning
Rate Methods", arXiv 1810.00143); follows the authors' code (docs/algorithms.md#adashift).

The second moment is fed the gradient that left a window of the last :math:`n` gradients, so it is
independent of the gradients in the first moment. With :math:`w_i = \beta_1^i / \sum_{j<n} \beta_1^j`
and :math:`g_{t-n} = 0` while fewer than :math:`n+1` gradients were seen:

.. math::
    m_t = \textstyle\sum_{i<n} w_i\, g_{t-i} \qquad
    v_t = \beta_2 v_{t-1} + (1-\beta_2)\, \varphi(g_{t-n}^2) \\
    z_t = z_{t-1} \lor (v_t > 0) \qquad k_t = z_t\,(k_{t-1} + 1) \\
    x \leftarrow x - \gamma\, z_t \left(\lambda x + m_t / \left(\sqrt{v_t / (1-\beta_2^{k_t})} + \epsilon\right)\right)

:math:`\varphi` is the max (default) or mean over the whole tensor, giving one :math:`v` per tensor,
or ``"none"`` for an element-wise :math:`v`. The gate :math:`z` (the authors' code) holds a coordinate
still until its :math:`v` is positive and restarts the bias correction there: steps :math:`1..n` only
fill the window, and a tensor whose first gradients are exactly zero (LoRA's A while B is 0) is not
thrown by :math:`m/\epsilon`. The state keeps :math:`c = 1-\beta_2^{k}` (0 while the gate is closed),
updated as :math:`c \leftarrow z\,(\beta_2 c + 1 - \beta_2)`. Weight decay is decoupled (the paper
leaves it open; this is the convention of ``Trainer``'s ``weight_decay``) and gated like the step.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ..sharding import Reduction, local
from ._arena import ELEM, SCALAR, PerTensor, segment_amax, segment_sum
from ._base import KernelOptimizer, check_betas, check_common, denominator_floor, run_kernel, run_reduction

__all__ = ["AdaShift", "adashift"]

PHIS = ("max", "mean", "none")


class AdaShift(KernelOptimizer):
    """AdaShift: Adam with a temporally shifted second moment over a window of ``n`` gradients
    (docs/algorithms.md#adashift)."""

    state_buffers = ("exp_avg",)
    sharded_statistics = ("phi = max/mean of g_{t-n}^2 over each whole tensor from one all-reduce of the shards' "
                          "maxima / sums per step (phi = none: element-wise, nothing to reduce)")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-10,
        weight_decay: float = 0.0,
        n: int = 10,
        phi: str = "max",
        *,
        impl: str | None = None,
    ) -> None:
        check_common(lr, weight_decay, eps)
        check_betas("betas", betas)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"Invalid n: {n!r}; allowed values are integers >= 1 (default 10)")
        if phi not in PHIS:
            raise ValueError(f"Invalid phi: {phi!r}; allowed values are {', '.join(PHIS)} (default max)")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, n=n, phi=phi)
        super().__init__(params, defaults, impl)

    def init_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        super().init_state(p, state, group)
        # exp_avg holds m_t itself; the window starts at zero, so m_t's running update needs no
        # special case while it fills (the gradient leaving the window is 0 for t <= n)
        # with a scalar phi, v is one number per tensor, the same on every rank under FSDP2: a plain 0-d tensor
        state["exp_avg_sq"] = (torch.zeros_like(p) if group["phi"] == "none"
                               else torch.zeros((), dtype=p.dtype, device=local(p).device))
        state["bias_correction2"] = torch.zeros_like(state["exp_avg_sq"])  # 1 - beta2^k, 0 while the gate is closed
        # n separate tensors, not one (n, *shape) tensor: the kernel gets the slot's tensor, so the
        # compiled kernel sees the same input metadata at every step (a slot index would recompile)
        state["grad_window"] = [torch.zeros_like(p, memory_format=torch.preserve_format) for _ in range(group["n"])]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """``torch.optim``'s, plus the gate of a state saved before it existed (hf-adasam 0.1.0): v > 0 exactly
        where that run had been stepping, with bias correction counted from step n + 1."""
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if state and "bias_correction2" not in state:
                    v, taken = state["exp_avg_sq"], max(state["step"] - group["n"], 0)
                    state["bias_correction2"] = (v > 0).to(v.dtype) * (1 - group["betas"][1] ** taken)

    def update_bucket(self, group: dict[str, Any], params: list[Tensor], step: int) -> None:
        beta1, beta2 = group["betas"]
        n = group["n"]
        slot = (step - 1) % n  # holds g_{t-n}, written n steps ago; derived from step, so no pointer in state
        floor = denominator_floor(params[0].dtype, group["eps"])
        inputs = self.kernel_inputs(params, "exp_avg", "exp_avg_sq", "bias_correction2")
        oldest = [local(self.state[p]["grad_window"][slot]) for p in params]
        reduction = self.reduction(params)
        stats = None
        if reduction.sharded and group["phi"] != "none":  # phi over the whole tensor, not this rank's shard
            stats = phi_over_shards(oldest, group["phi"], reduction, [p.numel() for p in params])
        adashift(
            *inputs,
            oldest,
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            oldest_weight=beta1**n,
            window_sum=sum(beta1**j for j in range(n)),
            phi=group["phi"],
            denom_floor=floor or None,
            stats=stats,
            impl=self.kernel_impl,
        )


def phi_over_shards(oldest: list[Tensor], phi: str, reduction: Reduction, numels: list[int]) -> list[Tensor]:
    """φ(g²) of each whole tensor from its local shards (``oldest``): max or sum of squares, all-reduced."""
    acc = torch.promote_types(oldest[0].dtype, torch.float32)
    if phi == "max":  # an empty shard (uneven sharding) contributes 0: g^2 >= 0
        local_stat = [g.abs().amax().to(acc).square() if g.numel() else g.new_zeros((), dtype=acc) for g in oldest]
        return [s.to(g.dtype) for s, g in zip(reduction.each(local_stat, "max"), oldest, strict=True)]
    local_stat = [g.to(acc).square().sum() for g in oldest]
    return [(s / n).to(g.dtype) for s, n, g in zip(reduction.each(local_stat, "sum"), numels, oldest, strict=True)]


def _phi(sq: Tensor, phi: str) -> Tensor:
    if phi == "max":
        return sq.amax()
    if phi == "mean":
        return sq.mean()
    return sq


# ----------------------------------------------------------------------------------------------
# phase A (scalar phi): each tensor's v and gate; phase B: the element-wise step (phi = none: v and gate too)
# ----------------------------------------------------------------------------------------------
def _single_tensor_adashift_second_moment(
    exp_avg_sqs: list[Tensor],
    bias_correction2s: list[Tensor],
    oldest_grads: list[Tensor],
    *,
    beta2: float,
    phi: str,
    stats: list[Tensor] | None = None,
) -> None:
    """Phase A with a scalar φ: each tensor's v_t = β2 v + (1-β2) φ(g_{t-n}²) and c (1 - β2^k, 0 while the gate is
    closed). The gate z_t = (v_t > 0) or (c > 0) is then exactly c_t > 0, which phase B reads."""
    for i, (v, c, old) in enumerate(zip(exp_avg_sqs, bias_correction2s, oldest_grads, strict=True)):
        # stats: phi of each whole tensor, given when the tensors are shards (FSDP2)
        v.mul_(beta2).add_((_phi(old * old, phi) if stats is None else stats[i]) * (1 - beta2))
        gate = ((v > 0) | (c > 0)).to(v.dtype)  # z_t: once open, c > 0 keeps it open
        c.mul_(beta2).add_(1 - beta2).mul_(gate)  # 1 - beta2^k, k counted from the opening


def _multi_tensor_adashift_second_moment(
    exp_avg_sqs: list[Tensor],
    bias_correction2s: list[Tensor],
    oldest_grads: list[Tensor],
    *,
    beta2: float,
    phi: str,
    stats: list[Tensor] | None = None,
) -> None:
    torch._foreach_mul_(exp_avg_sqs, beta2)
    if stats is not None:  # phi of each whole tensor, given when the tensors are shards (FSDP2)
        torch._foreach_add_(exp_avg_sqs, stats, alpha=1 - beta2)
    else:  # max(g^2) = (max|g|)^2 and mean(g^2) = ||g||^2 / numel: one fused reduction per tensor
        stat = torch._foreach_norm(oldest_grads, float("inf") if phi == "max" else 2)
        torch._foreach_mul_(stat, stat)
        if phi == "mean":
            torch._foreach_div_(stat, [float(g.numel()) for g in oldest_grads])
        torch._foreach_add_(exp_avg_sqs, stat, alpha=1 - beta2)
    # gate z_t = sign(v + c) (both >= 0)
    gate = torch._foreach_add(exp_avg_sqs, bias_correction2s)
    torch._foreach_sign_(gate)
    torch._foreach_mul_(bias_correction2s, beta2)
    torch._foreach_add_(bias_correction2s, 1 - beta2)
    torch._foreach_mul_(bias_correction2s, gate)


def _arena_adashift_second_moment(blocks: list[Any], lay: tuple[Tensor, ...], numels: Tensor, *, beta2: float,
                                  phi: str) -> tuple[Tensor, Tensor]:
    """Phase A of the compiled impl: φ of every tensor by a segment reduction over its rows and tail elements, and
    each tensor's new v and c as two ``[N]`` tensors (stored by phase B; nothing is written here)."""
    (old_rows, old_tail), v, c = blocks  # v, c: per-tensor scalars, one value per tensor
    acc = torch.promote_types(old_rows.dtype, torch.float32)
    sq_rows, sq_tail = old_rows.to(acc).square(), old_tail.to(acc).square()
    if phi == "max":
        stat = segment_amax(sq_rows, sq_tail, lay, numels)
    else:
        stat = segment_sum(sq_rows, sq_tail, lay, numels) / numels
    v = v * beta2 + stat.to(v.dtype) * (1 - beta2)
    gate = ((v > 0) | (c > 0)).to(c.dtype)
    return v, (c * beta2 + (1 - beta2)) * gate


def _single_tensor_adashift(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    oldest_grads: list[Tensor],
    *,
    exp_avg_sqs: list[Tensor],
    bias_correction2s: list[Tensor],
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    oldest_weight: float,
    window_sum: float,
    phi: str,
    denom_floor: float | None,
) -> None:
    """Phase B. φ = none: v and c are element-wise and updated here; else phase A updated them (one per tensor)."""
    for p, g, m, old, v, c in zip(params, grads, exp_avgs, oldest_grads, exp_avg_sqs, bias_correction2s,
                                  strict=True):
        if phi == "none":
            v.mul_(beta2).add_(old * old * (1 - beta2))
            gate = ((v > 0) | (c > 0)).to(v.dtype)  # z_t: once open, c > 0 keeps it open
            c.mul_(beta2).add_(1 - beta2).mul_(gate)  # 1 - beta2^k, k counted from the opening
        else:
            gate = (c > 0).to(v.dtype)  # z_t (phase A)
        # m_t = sum_i w_i g_{t-i} kept as a running sum instead of re-reading the n stored gradients:
        # m_t = beta1 m_{t-1} + (g_t - beta1^n g_{t-n}) / sum_j beta1^j. A rounding error is multiplied
        # by beta1 < 1 at every later step, so errors stay bounded (no drift from the exact window sum).
        m.mul_(beta1).add_((g - old * oldest_weight) / window_sum)
        old.copy_(g)  # g_t takes the slot of g_{t-n}
        # where closed, v = c = 0: denom = 0 + eps + 1 is finite and denom / gate = inf gives a zero step
        closed = 1 - gate
        if denom_floor is not None:  # on sqrt(v) itself, before the bias correction
            v = v.clamp(min=denom_floor * denom_floor)
        denom = ((v / (c + closed)).sqrt() + eps + closed) / gate
        p.mul_(1 - gate * (lr * weight_decay))
        p.sub_(m / denom * lr)


def _multi_tensor_adashift(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    oldest_grads: list[Tensor],
    *,
    exp_avg_sqs: list[Tensor],
    bias_correction2s: list[Tensor],
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    oldest_weight: float,
    window_sum: float,
    phi: str,
    denom_floor: float | None,
) -> None:
    if phi == "none":
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, oldest_grads, oldest_grads, 1 - beta2)
        gate = torch._foreach_add(exp_avg_sqs, bias_correction2s)  # z_t = sign(v + c) (both >= 0)
        torch._foreach_sign_(gate)
        torch._foreach_mul_(bias_correction2s, beta2)
        torch._foreach_add_(bias_correction2s, 1 - beta2)
        torch._foreach_mul_(bias_correction2s, gate)
    else:  # with a scalar phi these are 0-d tensors, one per param (phase A updated them)
        gate = torch._foreach_sign(bias_correction2s)
    # running window sum, see _single_tensor_adashift
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, grads, alpha=1 / window_sum)
    torch._foreach_add_(exp_avgs, oldest_grads, alpha=-oldest_weight / window_sum)
    torch._foreach_copy_(oldest_grads, grads)
    closed = torch._foreach_mul(gate, -1.0)
    torch._foreach_add_(closed, 1.0)
    v = exp_avg_sqs if denom_floor is None else torch._foreach_clamp_min(exp_avg_sqs, denom_floor * denom_floor)
    denom = torch._foreach_div(v, torch._foreach_add(bias_correction2s, closed))
    torch._foreach_sqrt_(denom)
    torch._foreach_add_(denom, eps)
    torch._foreach_add_(denom, closed)
    torch._foreach_div_(denom, gate)  # inf where closed: a zero step
    if weight_decay != 0:
        decay = torch._foreach_mul(gate, -lr * weight_decay)
        torch._foreach_add_(decay, 1.0)
        torch._foreach_mul_(params, decay)
    # with a scalar phi, denom holds 0-d tensors that broadcast over their param
    torch._foreach_addcdiv_(params, exp_avgs, denom, -lr)


def adashift(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
             bias_correction2s: list[Tensor], oldest_grads: list[Tensor], *, impl: str = "foreach", beta2: float,
             phi: str, stats: list[Tensor] | None = None, **hyperparams: Any) -> None:
    """Functional AdaShift over lists (params, grads, exp_avg, exp_avg_sq, 1 - beta2^k, oldest window gradient):
    phase A (scalar phi: each tensor's v and c), then phase B (the element-wise step)."""
    state: dict[str, Any] = dict(exp_avg_sqs=exp_avg_sqs, bias_correction2s=bias_correction2s)
    stores: tuple[tuple[list[Tensor], PerTensor], ...] = ()
    if phi != "none":
        found = None
        if impl == "compiled" and stats is None:
            found = run_reduction(_arena_adashift_second_moment, [oldest_grads, exp_avg_sqs, bias_correction2s],
                                  (ELEM, SCALAR, SCALAR), dict(beta2=beta2, phi=phi))
        if found is None:  # phase A in place (given stats, FSDP2: scalar arithmetic, the foreach kernel's)
            run_kernel("foreach" if impl == "compiled" else impl, _single_tensor_adashift_second_moment,
                       _multi_tensor_adashift_second_moment, [exp_avg_sqs, bias_correction2s, oldest_grads],
                       dict(beta2=beta2, phi=phi, stats=stats))
        else:  # phase B reads the new v and c, and stores them
            v, c = PerTensor(found[0]), PerTensor(found[1])
            state = dict(exp_avg_sqs=v, bias_correction2s=c)
            stores = ((exp_avg_sqs, v), (bias_correction2s, c))
    run_kernel(impl, _single_tensor_adashift, _multi_tensor_adashift, [params, grads, exp_avgs, oldest_grads],
               dict(beta2=beta2, phi=phi, **state, **hyperparams), stores=stores)
