r"""AdaSAM's adaptive base update (Sun et al. 2023, "AdaSAM: Boosting Sharpness-Aware Minimization
with Adaptive Learning Rate and Momentum for Training Deep Neural Networks", arXiv 2303.00565).

AMSGrad without bias correction, driven by whatever gradient it is given (the SAM gradient
:math:`g = \nabla L_B(w + e)` when the perturbation of :mod:`hf_adasam.sharpness` is on; docs/algorithms.md#adasam):

.. math::
    m_t = \beta_1 m_{t-1} + (1-\beta_1) g \qquad
    v_t = \beta_2 v_{t-1} + (1-\beta_2) g^2 \\
    \hat v_t = \max(\hat v_{t-1}, v_t),\ \hat v_0 = \epsilon^2 \qquad
    w \leftarrow w (1 - \gamma\lambda) - \gamma\, m_t / \sqrt{\hat v_t}

With ``bias_correction=True`` the step uses :math:`m_t/(1-\beta_1^t)` and
:math:`\hat v_t/(1-\beta_2^t)` (the running max is kept uncorrected, as in ``torch.optim.Adam``'s
AMSGrad).
In float16 parameters :math:`\epsilon^2 = 10^{-16}` underflows to 0, so there the denominator is floored at the
square root of float16's smallest positive number (2.4e-4, :func:`~hf_adasam.optim._base.denominator_floor`) and
a coordinate whose gradient is always zero stays put instead of becoming 0/0; in every other dtype the floor
never acts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ._base import KernelOptimizer, check_betas, check_common, denominator_floor, run_kernel

__all__ = ["AdaSAM", "adasam"]


class AdaSAM(KernelOptimizer):
    """AdaSAM's base update (docs/algorithms.md#adasam); ``optim="adasam"`` adds the SAM perturbation."""

    state_buffers = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        bias_correction: bool = False,
        *,
        impl: str | None = None,
    ) -> None:
        check_common(lr, weight_decay, eps)
        check_betas("betas", betas)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, bias_correction=bias_correction)
        super().__init__(params, defaults, impl)

    def init_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        super().init_state(p, state, group)
        state["max_exp_avg_sq"].fill_(group["eps"] ** 2)

    def update_bucket(self, group: dict[str, Any], params: list[Tensor], step: int) -> None:
        beta1, beta2 = group["betas"]
        bc1, bc2 = (1 - beta1**step, 1 - beta2**step) if group["bias_correction"] else (1.0, 1.0)
        adasam(
            *self.kernel_inputs(params, *self.state_buffers),
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            weight_decay=group["weight_decay"],
            step_size=group["lr"] / bc1,
            bias_correction2_sqrt=math.sqrt(bc2),
            # sqrt(v_hat) >= eps, unless eps^2 underflowed in the param dtype (float16): then a floor
            denom_floor=denominator_floor(params[0].dtype, group["eps"]) / math.sqrt(bc2) or None,
            impl=self.kernel_impl,
        )


def _single_tensor_adasam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
    step_size: float,
    bias_correction2_sqrt: float,
    denom_floor: float | None = None,
) -> None:
    for p, g, m, v, vmax in zip(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, strict=True):
        p.mul_(1 - lr * weight_decay)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).add_(g * g * (1 - beta2))
        vmax.copy_(torch.maximum(vmax, v))  # not out=vmax: dynamo refuses a non-contiguous out=
        denom = vmax.sqrt() / bias_correction2_sqrt
        if denom_floor is not None:
            denom = denom.clamp(min=denom_floor)
        p.sub_(m / denom * step_size)


def _multi_tensor_adasam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
    step_size: float,
    bias_correction2_sqrt: float,
    denom_floor: float | None = None,
) -> None:
    if weight_decay != 0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    torch._foreach_maximum_(max_exp_avg_sqs, exp_avg_sqs)
    denom = torch._foreach_sqrt(max_exp_avg_sqs)
    torch._foreach_div_(denom, bias_correction2_sqrt)
    if denom_floor is not None:
        torch._foreach_clamp_min_(denom, denom_floor)
    torch._foreach_addcdiv_(params, exp_avgs, denom, -step_size)


def adasam(*tensors: list[Tensor], impl: str = "foreach", **hyperparams: float) -> None:
    """Functional AdaSAM base update over lists (params, grads, exp_avg, exp_avg_sq, max_exp_avg_sq)."""
    run_kernel(impl, _single_tensor_adasam, _multi_tensor_adasam, tensors, hyperparams)
