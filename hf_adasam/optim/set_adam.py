r"""SET-Adam (G. Zhang 2023, "On Suppressing Range of Adaptive Stepsizes of Adam to Improve
Generalisation Performance", arXiv 2302.01029); docs/algorithms.md#set-adam.

Adam's moments, then three operations on each layer's second moment (a layer is one tensor of
:math:`d_l` entries) that shrink the range of its adaptive step sizes:

.. math::
    \tilde v_l = v_l \cos^p\angle(v_l, \mathbf 1),\quad
    \cos\angle(v, \mathbf 1) = \textstyle\sum v / (\sqrt{d_l}\,\|v\|) \quad \text{(S: down-scale)} \\
    w_l = \sqrt{\tilde v_l / (1-\beta_2^t) + \epsilon} \quad \text{(E: } \epsilon\text{-embed)} \qquad
    \tilde w_l = w_l - \tau \min_i w_l[i] \quad \text{(T: down-translate)} \\
    x \leftarrow x (1 - \gamma\lambda) - \frac{\gamma}{1-\beta_1^t}\, m_t / \tilde w_l

Weight decay is decoupled. The cosine is scale-free, so it is taken on :math:`v_t`
itself; and since :math:`w` grows with :math:`v`, :math:`\min_i w_l[i]` is :math:`w` at
:math:`\min_i v_l[i]`, so the step is two kernels: three reductions per tensor (sum, norm, min) of
:math:`v_t` computed on the fly, giving each tensor's S and :math:`\tau \min_i w_l[i]`, then one fused
element-wise pass. In float16 parameters ε = 1e-16 underflows to 0, so there :math:`\tilde w` is floored at
the square root of float16's smallest positive number (2.4e-4, :func:`~hf_adasam.optim._base.denominator_floor`;
a coordinate whose gradient is always zero stays put instead of 0/0).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ..sharding import Reduction
from ._arena import ELEM, PerTensor, segment_amin, segment_sum
from ._base import KernelOptimizer, check_betas, check_common, check_range, denominator_floor, run_kernel, run_reduction

__all__ = ["SETAdam", "set_adam"]

# floor for a layer's ||v|| in the cosine: an all-zero v (no gradient yet) gets cos = 0, not 0/0
_TINY = 1e-30


class SETAdam(KernelOptimizer):
    """SET-Adam: Adam whose per-layer second moment is down-scaled, ε-embedded and down-translated
    (docs/algorithms.md#set-adam)."""

    state_buffers = ("exp_avg", "exp_avg_sq")
    sharded_statistics = ("each tensor's cosine and minimum of v over the whole tensor, from one all-reduce of the "
                          "shards' sums, sums of squares and minima per step")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-16,
        weight_decay: float = 0.0,
        p: float = 2.0,
        tau: float = 0.5,
        *,
        impl: str | None = None,
    ) -> None:
        check_common(lr, weight_decay, eps)
        check_betas("betas", betas)
        check_range("p", p)
        # tau < 1 keeps the smallest entry of w~ at (1 - tau) * min w > 0: no division by zero
        check_range("tau", tau, 0.0, 1.0, high_open=True)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, p=p, tau=tau)
        super().__init__(params, defaults, impl)

    def update_bucket(self, group: dict[str, Any], params: list[Tensor], step: int) -> None:
        beta1, beta2 = group["betas"]
        inputs = self.kernel_inputs(params, *self.state_buffers)  # params, grads, exp_avgs, exp_avg_sqs
        reduction = self.reduction(params)
        given = {}
        if reduction.sharded:  # the cosine and the minimum over the whole tensor, not this rank's shard
            _, grads, _, exp_avg_sqs = inputs
            given = dict(zip(("cos_given", "vmin_given"),
                             stats_over_shards(grads, exp_avg_sqs, beta2, reduction, [p.numel() for p in params]),
                             strict=True))
        set_adam(
            *inputs,
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            power=group["p"],
            tau=group["tau"],
            step_size=group["lr"] / (1 - beta1**step),
            bias_correction2=1 - beta2**step,
            # w~ >= (1 - tau) sqrt(eps), unless eps underflowed in the param dtype (float16): then a floor
            denom_floor=denominator_floor(params[0].dtype, min(group["eps"], (1 - group["tau"]) * group["eps"] ** 0.5))
            or None,
            **given,
            impl=self.kernel_impl,
        )


def stats_over_shards(grads: list[Tensor], exp_avg_sqs: list[Tensor], beta2: float, reduction: Reduction,
                      numels: list[int]) -> tuple[list[Tensor], list[Tensor]]:
    """Each whole tensor's cos∠(v_t, 1) and min v_t, from its local shards: v_t as the kernel is about to make
    it (out of place, one tensor at a time), three local reductions, all-reduced over the shards."""
    acc = torch.promote_types(exp_avg_sqs[0].dtype, torch.float32)
    sums, sqs, mins = [], [], []
    for g, v in zip(grads, exp_avg_sqs, strict=True):
        vt = (v * beta2 + g * g * (1 - beta2)).to(acc)
        sums.append(vt.sum())
        sqs.append(vt.square().sum())
        mins.append(vt.amin() if vt.numel() else vt.new_full((), float("inf")))  # an empty shard: no minimum
    sums, sqs, mins = reduction.each(sums, "sum"), reduction.each(sqs, "sum"), reduction.each(mins, "min")
    cos = [(s / (n**0.5 * q.sqrt().clamp(min=_TINY))).to(v.device, acc)
           for s, q, n, v in zip(sums, sqs, numels, exp_avg_sqs, strict=True)]
    return cos, [m.to(v.device, acc) for m, v in zip(mins, exp_avg_sqs, strict=True)]


def _single_tensor_set_adam_scale(
    grads: list[Tensor],
    exp_avg_sqs: list[Tensor],
    scales: list[Tensor],
    shifts: list[Tensor],
    *,
    beta2: float,
    eps: float,
    power: float,
    tau: float,
    bias_correction2: float,
    cos_given: list[Tensor] | None = None,
    vmin_given: list[Tensor] | None = None,
) -> None:
    """Phase 1, per tensor: S = cos^p / (1 - β2^t) and τ sqrt(min v_t S + ε), from v_t = β2 v + (1-β2) g²
    (computed here, stored by phase 2), into the one-element ``scales`` and ``shifts``.

    Its own kernel, so that these scalars are computed once per tensor: fused into the element loop, inductor
    recomputes them (two powers, two square roots) in every vector iteration.
    """
    # cos_given / vmin_given: each whole tensor's statistics, given when the tensors are shards (FSDP2)
    for i, (g, v, scale, shift) in enumerate(zip(grads, exp_avg_sqs, scales, shifts, strict=True)):
        if cos_given is None or vmin_given is None:
            # v_t rounded as phase 2 stores it; reductions in float32 at least: a bf16 sum loses the cosine
            v32 = (v * beta2 + g * g * (1 - beta2)).to(torch.promote_types(v.dtype, torch.float32))
            cos, vmin = v32.sum() / (v32.numel() ** 0.5 * v32.norm().clamp(min=_TINY)), v32.amin()
        else:
            cos, vmin = cos_given[i].reshape(()), vmin_given[i].reshape(())
        s = cos**power / bias_correction2  # S, and Adam's bias correction of v
        scale.copy_(s)
        shift.copy_((vmin * s + eps).sqrt() * tau)  # τ min_i w[i]


def _multi_tensor_set_adam_scale(
    grads: list[Tensor],
    exp_avg_sqs: list[Tensor],
    scales: list[Tensor],
    shifts: list[Tensor],
    *,
    beta2: float,
    eps: float,
    power: float,
    tau: float,
    bias_correction2: float,
    cos_given: list[Tensor] | None = None,
    vmin_given: list[Tensor] | None = None,
) -> None:
    if cos_given is None or vmin_given is None:
        vt = torch._foreach_mul(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(vt, grads, grads, 1 - beta2)
        # per-layer statistics, one fused reduction each; v >= 0, so its L1 norm is its sum and its
        # -inf norm its minimum
        acc = torch.promote_types(exp_avg_sqs[0].dtype, torch.float32)
        sums = torch._foreach_norm(vt, 1, dtype=acc)
        norms = torch._foreach_norm(vt, 2, dtype=acc)
        mins = torch._foreach_norm(vt, float("-inf"), dtype=acc)
        torch._foreach_clamp_min_(norms, _TINY)
        torch._foreach_mul_(norms, [v.numel() ** 0.5 for v in exp_avg_sqs])
        s = torch._foreach_div(sums, norms)  # cos
    else:  # each whole tensor's statistics, given when the tensors are shards (FSDP2)
        s, mins = [c.reshape(()).clone() for c in cos_given], [m.reshape(()).clone() for m in vmin_given]
    torch._foreach_pow_(s, power)
    torch._foreach_div_(s, bias_correction2)
    torch._foreach_copy_([t.reshape(()) for t in scales], s)
    torch._foreach_mul_(mins, s)
    torch._foreach_add_(mins, eps)
    torch._foreach_sqrt_(mins)
    torch._foreach_mul_(mins, tau)
    torch._foreach_copy_([t.reshape(()) for t in shifts], mins)


def _single_tensor_set_adam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    *,
    scales: list[Tensor],
    shifts: list[Tensor],
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    step_size: float,
    denom_floor: float | None = None,
) -> None:
    """Phase 2, element-wise: the moments, then the step with phase 1's per-tensor S and τ min w (0-d tensors,
    which promote like Python scalars; the compiled impl gives them per row)."""
    for x, g, m, v, scale, shift in zip(params, grads, exp_avgs, exp_avg_sqs, scales, shifts, strict=True):
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).add_(g * g * (1 - beta2))
        w = (v * scale + eps).sqrt()  # E
        x.mul_(1 - lr * weight_decay)
        denom = w - shift  # T
        if denom_floor is not None:
            denom = denom.clamp(min=denom_floor)
        x.sub_(m / denom * step_size)


def _multi_tensor_set_adam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    *,
    scales: list[Tensor],
    shifts: list[Tensor],
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    step_size: float,
    denom_floor: float | None = None,
) -> None:
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    denom = torch._foreach_mul(exp_avg_sqs, scales)  # S
    torch._foreach_add_(denom, eps)
    torch._foreach_sqrt_(denom)  # E
    torch._foreach_sub_(denom, shifts)  # T
    if denom_floor is not None:
        torch._foreach_clamp_min_(denom, denom_floor)
    if weight_decay != 0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    torch._foreach_addcdiv_(params, exp_avgs, denom, -step_size)


def _arena_set_adam_scale(blocks: list[tuple[Tensor, Tensor]], lay: tuple[Tensor, ...], numels: Tensor, *,
                          beta2: float, eps: float, power: float, tau: float, bias_correction2: float
                          ) -> tuple[Tensor, Tensor]:
    """Phase 1 of the compiled impl: every tensor's S and τ sqrt(min v_t S + ε) from segment reductions of v_t over
    its rows and tail elements (:func:`~hf_adasam.optim._base.run_reduction`), as two ``[N]`` tensors."""
    (g_rows, g_tail), (v_rows, v_tail) = blocks
    acc = torch.promote_types(v_rows.dtype, torch.float32)
    rows = (v_rows * beta2 + g_rows * g_rows * (1 - beta2)).to(acc)
    tail = (v_tail * beta2 + g_tail * g_tail * (1 - beta2)).to(acc)
    sums = segment_sum(rows, tail, lay, numels)
    squares = segment_sum(rows * rows, tail * tail, lay, numels)
    cos = sums / (numels.to(torch.float64).sqrt() * squares.sqrt().clamp(min=_TINY))
    s = cos**power / bias_correction2
    shift = (segment_amin(rows, tail, lay, numels).to(torch.float64) * s + eps).sqrt() * tau
    return s.to(acc), shift.to(acc)


def set_adam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    *,
    impl: str = "foreach",
    beta2: float,
    eps: float,
    power: float,
    tau: float,
    bias_correction2: float,
    cos_given: list[Tensor] | None = None,
    vmin_given: list[Tensor] | None = None,
    **hyperparams: Any,
) -> None:
    """Functional SET-Adam over lists (params, grads, exp_avgs, exp_avg_sqs): phase 1 (per-tensor scalars), then
    phase 2 (the element-wise step)."""
    knobs = dict(beta2=beta2, eps=eps, power=power, tau=tau, bias_correction2=bias_correction2)
    found = None
    if impl == "compiled" and cos_given is None:
        found = run_reduction(_arena_set_adam_scale, [grads, exp_avg_sqs], (ELEM, ELEM), knobs)
    if found is not None:
        scales, shifts = found
    else:
        acc = torch.promote_types(exp_avg_sqs[0].dtype, torch.float32)
        scales = torch.empty(len(params), dtype=acc, device=exp_avg_sqs[0].device)
        shifts = torch.empty_like(scales)
        # the per-tensor scalars given (FSDP2 shards): phase 1 is scalar arithmetic, the foreach kernel's
        run_kernel("foreach" if impl == "compiled" else impl, _single_tensor_set_adam_scale,
                   _multi_tensor_set_adam_scale, [grads, exp_avg_sqs, list(scales.unbind()), list(shifts.unbind())],
                   dict(knobs, cos_given=cos_given, vmin_given=vmin_given))
    run_kernel(impl, _single_tensor_set_adam, _multi_tensor_set_adam, [params, grads, exp_avgs, exp_avg_sqs],
               dict(beta2=beta2, eps=eps, scales=PerTensor(scales), shifts=PerTensor(shifts), **hyperparams))
