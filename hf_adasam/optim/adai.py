r"""Adai and AdaiW (Xie et al. ICML 2022, "Adaptive Inertia: Disentangling the Effects of Adaptive
Learning Rate and Momentum", arXiv 2006.15815); follows the authors' code (docs/algorithms.md#adai).

The inertia :math:`\beta_1` adapts per coordinate to the curvature proxy :math:`\hat v`, relative to
its mean :math:`\bar v` over *all* parameters of *all* param groups (one scalar per step):

.. math::
    v_t = \beta_2 v_{t-1} + (1-\beta_2) g^2 \qquad \hat v = v_t / (1-\beta_2^t) \qquad
    \bar v = \mathrm{mean}(\hat v) \\
    \beta_1 = \mathrm{clamp}(1 - \beta_0 \hat v / \bar v,\ 0,\ 1-\epsilon) \qquad
    P_t = P_{t-1} \beta_1,\ P_0 = 1 \\
    m_t = \beta_1 m_{t-1} + (1-\beta_1) g \qquad x \leftarrow x - \gamma\, m_t / (1 - P_t)

Adai adds :math:`\lambda x` to :math:`g` (coupled weight decay); AdaiW (``decoupled=True``) scales
:math:`x` by :math:`1-\gamma\lambda`. Where the authors' code divides 0/0 (every :math:`v` is
exactly 0: a first step whose gradients are all zero, or gradients whose square underflows),
:math:`\bar v` is floored at the dtype's smallest normal number, so that step is a zero step instead of
NaN weights; otherwise the floor never acts.
The state keeps :math:`1 - P_t` (``bias_correction1``), updated as
:math:`1 - P_t = \beta_1 (1 - P_{t-1}) + (1 - \beta_1)`, and the kernels work with :math:`1-\beta_1`:
both keep their relative precision in bfloat16, where :math:`\beta_1 = 1 - 10^{-3}` and :math:`P_t` round to 1.

A step is two kernels: :math:`\sum \hat v` with :math:`v_t` computed on the fly (reads g and v, writes nothing),
then the element-wise update, which computes :math:`v_t` again and stores it. Nothing is written between the two,
so the compiled impl can run each as one call over all tensors (a kernel that read and wrote would need the
written values back in order).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ._base import Bucket, KernelOptimizer, check_common, check_range, run_kernel

__all__ = ["Adai", "adai", "adai_second_moment"]


class Adai(KernelOptimizer):
    """Adai (docs/algorithms.md#adai); ``decoupled=True`` is AdaiW. ``lr`` is on SGD's scale and has no default."""

    sharded_statistics = "the mean of v_hat over all parameters from one all-reduce of the shards' sums per step"

    # bias_correction1 holds 1 - P_t rather than P_t: near P = 1 (beta1 = 1 - eps) bf16 cannot tell P
    # from 1 (it rounds 1 - 1e-3 to 1, giving m / 0), while 1 - P keeps its relative precision there
    state_buffers = ("exp_avg", "exp_avg_sq", "bias_correction1")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        betas: tuple[float, float] = (0.1, 0.99),
        eps: float = 1e-3,
        weight_decay: float = 0.0,
        decoupled: bool = False,
        *,
        impl: str | None = None,
    ) -> None:
        check_common(lr, weight_decay)
        # eps > 0 keeps beta1 < 1, hence P_t < 1: a coordinate whose gradient was always 0 gets 0/(1-P), not 0/0
        check_range("eps", eps, 0.0, 1.0, low_open=True)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"Invalid betas: {betas!r}; expected a tuple (beta0 in [0, inf), beta2 in [0, 1))")
        check_range("betas[0]", betas[0])  # beta0 scales 1 - beta1; the clamp keeps beta1 in range
        check_range("betas[1]", betas[1], 0.0, 1.0, high_open=True)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, decoupled=decoupled)
        super().__init__(params, defaults, impl)

    def global_statistics(self, buckets: list[Bucket]) -> dict[str, Any]:
        """Phase 1: v̄, the mean of v̂ over every parameter of every group (v_t computed, not stored)."""
        sums = [self.second_moment(group, params, step) for group, params, step in buckets]
        every = [p for bucket in buckets for p in bucket.params]
        reduction = self.reduction(every)
        if reduction.sharded:  # each rank summed its shards: one all-reduce makes the sums whole (numel is global)
            sums = reduction.combined(sums, "Adai's mean of v_hat")
        numel = sum(p.numel() for p in every)
        if len(sums) == 1:
            vhat_mean = sums[0] / numel
        else:  # buckets may differ in device or dtype: add up on the first one, in the widest dtype
            dtype = functools.reduce(torch.promote_types, [s.dtype for s in sums])
            vhat_mean = torch.stack([s.to(sums[0].device, dtype) for s in sums]).sum() / numel
        # v_bar = 0 only when every v is 0 (a first step whose gradients are all zero, or g^2 underflowing):
        # the authors' code then divides 0/0 and every weight becomes NaN; the floor makes it a zero step
        return {"vhat_mean": vhat_mean.clamp(min=torch.finfo(vhat_mean.dtype).tiny)}

    def second_moment(self, group: dict[str, Any], params: list[Tensor], step: int) -> Tensor:
        """The sum of v_hat of one bucket (v_t as this step will make it) as a 0-d tensor (no host sync)."""
        acc_dtype = torch.promote_types(params[0].dtype, torch.float32)  # bf16 would round the sum
        total = torch.zeros((), dtype=acc_dtype, device=params[0].device)
        _, beta2 = group["betas"]
        adai_second_moment(
            *self.kernel_inputs(params, "exp_avg_sq"),
            [total],
            beta2=beta2,
            weight_decay=group["weight_decay"],
            bias_correction2=1 - beta2**step,
            coupled_decay=not group["decoupled"] and group["weight_decay"] != 0,
            impl=self.kernel_impl,
        )
        return total

    def update_bucket(  # type: ignore[override]
        self, group: dict[str, Any], params: list[Tensor], step: int, vhat_mean: Tensor
    ) -> None:
        """Phase 2: v_t, adaptive inertia, momentum and the step, given v̄ (:meth:`global_statistics`)."""
        vhat_mean = vhat_mean.to(params[0].device)
        beta0, beta2 = group["betas"]
        decay = group["weight_decay"] != 0
        adai(
            *self.kernel_inputs(params, *self.state_buffers),
            lr=group["lr"],
            beta0=beta0,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            # beta0 / ((1 - beta2^t) v_bar), once per step: the element loop multiplies (a division per element
            # and scalar would be most of its arithmetic). Where v_bar is floored (every v is 0) the quotient
            # overflows: the largest finite number instead gives 0 * max = 0, where inf would give NaN
            inertia_scale=(beta0 / ((1 - beta2**step) * vhat_mean)).clamp(max=torch.finfo(vhat_mean.dtype).max),
            coupled_decay=decay and not group["decoupled"],
            decoupled_decay=decay and group["decoupled"],
            impl=self.kernel_impl,
        )


# ----------------------------------------------------------------------------------------------
# phase 1: sum(v_hat), v_t computed on the fly (nothing written)
# ----------------------------------------------------------------------------------------------
def _single_tensor_adai_second_moment(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avg_sqs: list[Tensor],
    totals: list[Tensor],
    *,
    beta2: float,
    weight_decay: float,
    bias_correction2: float,
    coupled_decay: bool,
) -> None:
    (total,) = totals
    for p, g, v in zip(params, grads, exp_avg_sqs, strict=True):
        if coupled_decay:
            g = g + p * weight_decay
        vt = v * beta2 + g * g * (1 - beta2)
        # each row (last dimension) summed first, the rows in float64: a long float32 sum loses digits
        total.add_(vt.sum(-1, dtype=total.dtype).sum(dtype=torch.float64) / bias_correction2)


def _multi_tensor_adai_second_moment(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avg_sqs: list[Tensor],
    totals: list[Tensor],
    *,
    beta2: float,
    weight_decay: float,
    bias_correction2: float,
    coupled_decay: bool,
) -> None:
    (total,) = totals
    if coupled_decay:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    # sum(v_t) = beta2 sum(v) + (1 - beta2) sum(g^2): no copy of v; v >= 0, so its L1 norm is its sum
    sums = torch._foreach_norm(exp_avg_sqs, 1, dtype=total.dtype)
    squares = torch._foreach_norm(grads, 2, dtype=total.dtype)
    torch._foreach_mul_(squares, squares)
    total.add_((torch.stack(sums).sum() * beta2 + torch.stack(squares).sum() * (1 - beta2)) / bias_correction2)


def adai_second_moment(*tensors: list[Tensor], impl: str = "foreach", **hyperparams: Any) -> None:
    """Adai's phase 1 over lists (params, grads, exp_avg_sq, [total]): total += sum(v_hat) (v_t computed, not
    stored)."""
    run_kernel(impl, _single_tensor_adai_second_moment, _multi_tensor_adai_second_moment, tensors, hyperparams,
               shared=1)


# ----------------------------------------------------------------------------------------------
# phase 2: v_t, adaptive inertia, momentum, step
# ----------------------------------------------------------------------------------------------
def _single_tensor_adai(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    bias_correction1s: list[Tensor],
    *,
    lr: float,
    beta0: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    inertia_scale: Tensor,
    coupled_decay: bool,
    decoupled_decay: bool,
) -> None:
    for p, g, m, v, bc1 in zip(params, grads, exp_avgs, exp_avg_sqs, bias_correction1s, strict=True):
        if coupled_decay:
            g = g + p * weight_decay
        v.mul_(beta2).add_(g * g * (1 - beta2))
        # 1 - beta1 = clamp(beta0 v_hat / v_bar, eps, 1) = clamp(v * inertia_scale, eps, 1), kept in that form:
        # bf16 rounds beta1 = 1 - 1e-3 to 1. Two one-sided clamps, as torch.compile rejects clamp(<0-d tensor>, 1).
        one_minus_beta1 = (v * inertia_scale).clamp(min=eps).clamp(max=1)
        bc1.mul_(1 - one_minus_beta1).add_(one_minus_beta1)  # 1 - P_t = beta1 (1 - P_{t-1}) + (1 - beta1)
        m.lerp_(g, one_minus_beta1)
        if decoupled_decay:
            p.mul_(1 - lr * weight_decay)
        p.sub_(m / bc1 * lr)


def _multi_tensor_adai(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    bias_correction1s: list[Tensor],
    *,
    lr: float,
    beta0: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    inertia_scale: Tensor,
    coupled_decay: bool,
    decoupled_decay: bool,
) -> None:
    if coupled_decay:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    # q = 1 - beta1 = clamp(beta0 * v_hat / v_bar, eps, 1) = clamp(v * inertia_scale, eps, 1)
    q = torch._foreach_mul(exp_avg_sqs, inertia_scale)
    torch._foreach_clamp_min_(q, eps)
    torch._foreach_clamp_max_(q, 1.0)
    torch._foreach_addcmul_(bias_correction1s, bias_correction1s, q, -1)  # 1 - P_t = beta1 (1 - P_{t-1}) + q
    torch._foreach_add_(bias_correction1s, q)
    torch._foreach_lerp_(exp_avgs, grads, q)
    if decoupled_decay:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    torch._foreach_addcdiv_(params, exp_avgs, bias_correction1s, -lr)


def adai(*tensors: list[Tensor], impl: str = "foreach", **hyperparams: Any) -> None:
    """Adai's phase 2 over lists (params, grads, exp_avg, exp_avg_sq, 1 - P), given ``inertia_scale`` =
    β0 / ((1 - β2^t) v̄): v_t stored, then the step."""
    run_kernel(impl, _single_tensor_adai, _multi_tensor_adai, tensors, hyperparams)

