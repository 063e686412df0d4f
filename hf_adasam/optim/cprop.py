r"""CProp (Preechakul & Kijsirikul 2019, "CProp: Adaptive Learning Rate Scaling from Past
Gradient Conformity", arXiv 1912.06334); follows the authors' code (docs/algorithms.md#cprop).

Each coordinate's step is scaled by the confidence that the sign of its mean past gradient is
right, from an EMA estimate of the gradient's mean and standard error:

.. math::
    a_t = \beta a_{t-1} + (1-\beta) g \qquad b_t = \beta b_{t-1} + (1-\beta) g^2 \qquad
    \mu = a_t / (1-\beta^t) \qquad s = b_t / (1-\beta^t) \\
    n = (1-\beta^t)/(1-\beta) \qquad
    \mathrm{se} = \sqrt{\max(s - \mu^2, 0) / (n - 1 + \epsilon)} + \epsilon \\
    \mathrm{scale} = \min\!\left(1,\ c \cdot \mathrm{erf}\!\left(|\mu| / (\sqrt 2\, \mathrm{se})\right)\right)

``CPropAdam`` multiplies Adam's step by the scale, ``CPropSGD`` the SGD(-momentum) direction. As in
the authors' code, weight decay is coupled; CProp-Adam computes the scale from :math:`g + \lambda x`,
CProp-SGD (the authors' ``cprop_sgd.py``) from the raw gradient :math:`g`, then steps along
:math:`d = g + \lambda x` (its momentum buffer built from :math:`d`, as ``torch.optim.SGD``'s). The scale is
``cprop_c · erf``, the exact normal CDF (``2Φ − 1``). In float16 parameters ε = 1e-8 underflows to 0, so
there the standard error and Adam's denominator are floored at the square root of float16's smallest positive
number (2.4e-4, :func:`~hf_adasam.optim._base.denominator_floor`; a coordinate whose gradient is always zero gets
a zero step, not 0/0); in other dtypes no floor acts.

The state holds :math:`\mu` and :math:`M = (1-\beta^t)(s - \mu^2)` updated by West's weighted
recursion (:math:`r = (1-\beta)/(1-\beta^t)`, :math:`\delta = g - \mu_{t-1}`,
:math:`\mu_t = \mu_{t-1} + r\delta`, :math:`M_t = \beta M_{t-1} + (1-\beta)\,\delta\,(g - \mu_t)`):
equal to the formulas above in exact arithmetic, but without the cancellation in :math:`s - \mu^2`. That
matters: at :math:`t = 1` the true variance is 0 and :math:`n - 1 + \epsilon = \epsilon`, so float32
rounding of :math:`s - \mu^2` (about :math:`10^{-7} g^2`) would give a scale near 0.3 instead of 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ._base import KernelOptimizer, check_betas, check_common, check_range, denominator_floor, run_kernel

__all__ = ["CPropAdam", "CPropSGD", "cprop_adam", "cprop_sgd"]

_SQRT2 = math.sqrt(2.0)
# erf(6) = 1 - 2.2e-17 rounds to 1.0 even in float64, so clamping erf's argument at 6 changes no result.
# It matters for speed: where the variance is ~0 (a constant gradient, e.g. weight decay alone on an
# unused embedding row) the argument is ~1e5, and erf of such values made the fused CPU kernel 1.8x slower.
_ERF_SATURATION = 6.0


def _check_cprop(beta: float, c: float, eps: float) -> None:
    check_range("cprop_beta", beta, 0.0, 1.0, high_open=True)
    check_range("cprop_c", c, 0.0, low_open=True)
    check_range("cprop_eps", eps)


def _cprop_hyperparams(group: dict[str, Any], step: int, dtype: torch.dtype) -> dict[str, Any]:
    beta = group["cprop_beta"]
    bc = 1 - beta**step
    # rate: the new gradient's weight in the bias-corrected mean; dof: n - 1 + eps with n = bc / (1 - beta)
    return dict(cprop_beta=beta, cprop_c=group["cprop_c"], cprop_eps=group["cprop_eps"], cprop_bc=bc,
                cprop_rate=(1 - beta) / bc, cprop_dof=bc / (1 - beta) - 1 + group["cprop_eps"],
                se_floor=denominator_floor(dtype, group["cprop_eps"]) or None)


class CPropAdam(KernelOptimizer):
    """Adam whose step is scaled per coordinate by CProp's gradient-conformity confidence (docs/algorithms.md#cprop)."""

    state_buffers = ("exp_avg", "exp_avg_sq", "cprop_mean", "cprop_m2")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        cprop_beta: float = 0.999,
        cprop_c: float = 1.0,
        cprop_eps: float = 1e-8,
        *,
        impl: str | None = None,
    ) -> None:
        check_common(lr, weight_decay, eps)
        check_betas("betas", betas)
        _check_cprop(cprop_beta, cprop_c, cprop_eps)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, cprop_beta=cprop_beta,
                        cprop_c=cprop_c, cprop_eps=cprop_eps)
        super().__init__(params, defaults, impl)

    def update_bucket(self, group: dict[str, Any], params: list[Tensor], step: int) -> None:
        beta1, beta2 = group["betas"]
        cprop_adam(
            *self.kernel_inputs(params, *self.state_buffers),
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            step_size=group["lr"] / (1 - beta1**step),
            bias_correction2_sqrt=math.sqrt(1 - beta2**step),
            denom_floor=denominator_floor(params[0].dtype, group["eps"]) / math.sqrt(1 - beta2**step) or None,
            **_cprop_hyperparams(group, step, params[0].dtype),
            impl=self.kernel_impl,
        )


class CPropSGD(KernelOptimizer):
    """SGD(-momentum) whose direction is scaled per coordinate by CProp's confidence (docs/algorithms.md#cprop).

    ``momentum``, ``dampening`` and ``nesterov`` mean what they mean in ``torch.optim.SGD``.
    """

    # + "momentum_buffer" where momentum != 0 (as torch.optim.SGD, none without momentum)
    state_buffers = ("cprop_mean", "cprop_m2")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        cprop_beta: float = 0.999,
        cprop_c: float = 1.0,
        cprop_eps: float = 1e-8,
        *,
        impl: str | None = None,
    ) -> None:
        check_common(lr, weight_decay)
        check_range("momentum", momentum, 0.0, 1.0, high_open=True)
        check_range("dampening", dampening, 0.0, 1.0)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Invalid nesterov=True: it requires momentum > 0 and dampening = 0")
        _check_cprop(cprop_beta, cprop_c, cprop_eps)
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
                        cprop_beta=cprop_beta, cprop_c=cprop_c, cprop_eps=cprop_eps)
        super().__init__(params, defaults, impl)

    def update_bucket(self, group: dict[str, Any], params: list[Tensor], step: int) -> None:
        buffers = None
        if group["momentum"] != 0:
            for p in params:  # created at the first step with momentum (torch.optim.SGD: at the first gradient)
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            (buffers,) = self.buffers(params, "momentum_buffer")
        cprop_sgd(
            *self.kernel_inputs(params, *self.state_buffers),
            lr=group["lr"],
            momentum=group["momentum"],
            momentum_buffers=buffers,
            # torch.optim.SGD starts the buffer at the first gradient, undampened
            dampening=group["dampening"] if step > 1 else 0.0,
            weight_decay=group["weight_decay"],
            nesterov=group["nesterov"],
            **_cprop_hyperparams(group, step, params[0].dtype),
            impl=self.kernel_impl,
        )


# ----------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------
def _scale(
    g: Tensor, mu: Tensor, m2: Tensor, *, cprop_beta: float, cprop_c: float, cprop_eps: float, cprop_bc: float,
    cprop_rate: float, cprop_dof: float, se_floor: float | None,
) -> Tensor:
    """Update (mu, m2) with g in place; return CProp's scale."""
    delta = g - mu
    mu.add_(delta * cprop_rate)
    m2.mul_(cprop_beta).add_(delta * (g - mu) * (1 - cprop_beta))
    se = (m2.clamp(min=0) / (cprop_bc * cprop_dof)).sqrt() + cprop_eps
    if se_floor is not None:
        se = se.clamp(min=se_floor)
    return (torch.erf((mu.abs() / (se * _SQRT2)).clamp(max=_ERF_SATURATION)) * cprop_c).clamp(max=1)


def _multi_tensor_scale(
    grads: list[Tensor], mus: list[Tensor], m2s: list[Tensor], *, cprop_beta: float, cprop_c: float,
    cprop_eps: float, cprop_bc: float, cprop_rate: float, cprop_dof: float, se_floor: float | None,
) -> list[Tensor]:
    delta = torch._foreach_sub(grads, mus)
    torch._foreach_add_(mus, delta, alpha=cprop_rate)
    dev = torch._foreach_sub(grads, mus)
    torch._foreach_mul_(m2s, cprop_beta)
    torch._foreach_addcmul_(m2s, delta, dev, 1 - cprop_beta)
    var = torch._foreach_clamp_min(m2s, 0.0)
    torch._foreach_div_(var, cprop_bc * cprop_dof)
    se = torch._foreach_sqrt(var)
    torch._foreach_add_(se, cprop_eps)
    if se_floor is not None:
        torch._foreach_clamp_min_(se, se_floor)
    torch._foreach_mul_(se, _SQRT2)
    z = torch._foreach_abs(mus)
    torch._foreach_div_(z, se)
    torch._foreach_clamp_max_(z, _ERF_SATURATION)
    scale = torch._foreach_erf(z)
    if cprop_c != 1:
        torch._foreach_mul_(scale, cprop_c)
    torch._foreach_clamp_max_(scale, 1.0)
    return scale


def _single_tensor_cprop_adam(
    params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
    cmeans: list[Tensor], cm2s: list[Tensor], *, beta1: float, beta2: float, eps: float, weight_decay: float,
    step_size: float, bias_correction2_sqrt: float, denom_floor: float | None, **cprop_kw: Any,
) -> None:
    for x, g, m, v, mu, m2 in zip(params, grads, exp_avgs, exp_avg_sqs, cmeans, cm2s, strict=True):
        g = g + x * weight_decay
        scale = _scale(g, mu, m2, **cprop_kw)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).add_(g * g * (1 - beta2))
        denom = v.sqrt() / bias_correction2_sqrt + eps
        if denom_floor is not None:
            denom = denom.clamp(min=denom_floor)
        x.sub_(m / denom * scale * step_size)


def _multi_tensor_cprop_adam(
    params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
    cmeans: list[Tensor], cm2s: list[Tensor], *, beta1: float, beta2: float, eps: float, weight_decay: float,
    step_size: float, bias_correction2_sqrt: float, denom_floor: float | None, **cprop_kw: Any,
) -> None:
    if weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    scale = _multi_tensor_scale(grads, cmeans, cm2s, **cprop_kw)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bias_correction2_sqrt)
    torch._foreach_add_(denom, eps)
    if denom_floor is not None:
        torch._foreach_clamp_min_(denom, denom_floor)
    torch._foreach_mul_(scale, exp_avgs)
    torch._foreach_addcdiv_(params, scale, denom, -step_size)


def _single_tensor_cprop_sgd(
    params: list[Tensor], grads: list[Tensor], cmeans: list[Tensor], cm2s: list[Tensor], *,
    lr: float, momentum: float, momentum_buffers: list[Tensor] | None, dampening: float, weight_decay: float,
    nesterov: bool, **cprop_kw: Any,
) -> None:
    for i, (x, g, mu, m2) in enumerate(zip(params, grads, cmeans, cm2s, strict=True)):
        scale = _scale(g, mu, m2, **cprop_kw)  # from the raw gradient (authors' cprop_sgd.py)
        d = g + x * weight_decay
        if momentum_buffers is not None:
            buf = momentum_buffers[i]
            buf.mul_(momentum).add_(d * (1 - dampening))
            d = d + buf * momentum if nesterov else buf
        x.sub_(d * scale * lr)


def _multi_tensor_cprop_sgd(
    params: list[Tensor], grads: list[Tensor], cmeans: list[Tensor], cm2s: list[Tensor], *,
    lr: float, momentum: float, momentum_buffers: list[Tensor] | None, dampening: float, weight_decay: float,
    nesterov: bool, **cprop_kw: Any,
) -> None:
    scale = _multi_tensor_scale(grads, cmeans, cm2s, **cprop_kw)  # from the raw gradient (authors' cprop_sgd.py)
    if weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    direction = grads
    if momentum_buffers is not None:
        torch._foreach_mul_(momentum_buffers, momentum)
        torch._foreach_add_(momentum_buffers, grads, alpha=1 - dampening)
        direction = torch._foreach_add(grads, momentum_buffers, alpha=momentum) if nesterov else momentum_buffers
    torch._foreach_addcmul_(params, direction, scale, -lr)


def cprop_adam(*tensors: list[Tensor], impl: str = "foreach", **hyperparams: Any) -> None:
    """Functional CProp-Adam over lists (params, grads, exp_avg, exp_avg_sq, cprop_mean, cprop_m2)."""
    run_kernel(impl, _single_tensor_cprop_adam, _multi_tensor_cprop_adam, tensors, hyperparams)


def cprop_sgd(*tensors: list[Tensor], impl: str = "foreach", **hyperparams: Any) -> None:
    """Functional CProp-SGD over lists (params, grads, cprop_mean, cprop_m2); ``momentum_buffers``: a list, or None
    without momentum."""
    run_kernel(impl, _single_tensor_cprop_sgd, _multi_tensor_cprop_sgd, tensors, hyperparams)
