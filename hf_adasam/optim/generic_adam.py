r"""Generic Adam (Zou, Shen, Jie, Zhang & Liu, CVPR 2019, "A Sufficient Condition for Convergences of
Adam and RMSProp", arXiv 1811.09358; docs/algorithms.md#generic-adam).

One recursion that covers RMSProp (:math:`\beta=0`, constant :math:`\theta`), Adam without bias
correction (constant :math:`\beta, \theta`) and AdaGrad (:math:`\beta=0, \theta_t = 1-1/t,
\alpha_t=\alpha/\sqrt t`):

.. math::
    v_t = \theta_t v_{t-1} + (1-\theta_t) g^2,\ v_0 = \epsilon \qquad
    m_t = \beta_t m_{t-1} + (1-\beta_t) g \\
    x \leftarrow x (1 - \alpha_t\lambda) - \alpha_t\, m_t / \sqrt{v_t} \\
    \alpha_t = \mathrm{lr} / t^{\mathrm{lr\_power}} \qquad
    \theta_t = 1 - (1-\theta) / t^{\mathrm{theta\_power}} \qquad \beta_t = \beta

``beta`` and ``theta`` may instead be callables ``t -> value`` (evaluated once per step, in Python).
The conditions under which this converges are checked by :mod:`hf_adasam.generic_adam`.

Two things the paper leaves open: weight decay, when asked for, is decoupled (the Trainer's
convention, as in AdaSAM); and the denominator is floored at the square root of the dtype's smallest
positive number (:func:`~hf_adasam.optim._base.denominator_floor`). That changes nothing unless
:math:`v_t = 0` exactly (a gradient that is zero at :math:`t=1` with :math:`\theta_1 = 0`, as in AdaGrad,
long runs of zero gradients, or :math:`g^2` underflowing), where the bare formula gives 0/0 = NaN or a step
of :math:`m/0`, and this gives a step no larger than an ordinary one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._base import KernelOptimizer, check_common, check_range, denominator_floor, run_kernel

__all__ = ["GenericAdam", "alpha_schedule", "generic_adam", "theta_schedule"]

Schedule = float | Callable[[int], float]


def alpha_schedule(t: int | np.ndarray, lr: float, lr_power: float) -> float | np.ndarray:
    """α_t = lr / t**lr_power for steps ``t >= 1`` (an int, or a numpy array of steps)."""
    alpha_t = lr / np.asarray(t, dtype=np.float64) ** lr_power
    return float(alpha_t) if alpha_t.ndim == 0 else alpha_t


def theta_schedule(t: int | np.ndarray, theta: float, theta_power: float) -> float | np.ndarray:
    """θ_t = 1 − (1 − theta) / t**theta_power for steps ``t >= 1``; θ_1 and a constant θ are ``theta`` exactly."""
    t = np.asarray(t, dtype=np.float64)
    theta_t = np.where((t == 1) | (theta_power == 0), theta, 1.0 - (1.0 - theta) / t**theta_power)
    return float(theta_t) if theta_t.ndim == 0 else theta_t


def _check_schedule(name: str, value: Schedule) -> None:
    if not callable(value):
        check_range(name, value, 0.0, 1.0, high_open=True)


class GenericAdam(KernelOptimizer):
    """Generic Adam: Adam/RMSProp/AdaGrad as one recursion with scheduled ``α_t, θ_t``
    (docs/algorithms.md#generic-adam)."""

    state_buffers = ("exp_avg", "exp_avg_sq")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        beta: Schedule = 0.9,
        theta: Schedule = 0.999,
        theta_power: float = 0.0,
        lr_power: float = 0.0,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        impl: str | None = None,
    ) -> None:
        check_common(lr, weight_decay, eps)
        _check_schedule("beta", beta)
        _check_schedule("theta", theta)
        check_range("theta_power", theta_power)
        check_range("lr_power", lr_power)
        if callable(theta) and theta_power != 0:
            raise ValueError(
                f"Invalid theta_power: {theta_power!r}; must be 0 when theta is a callable (the callable is θ_t)"
            )
        defaults = dict(
            lr=lr,
            beta=beta,
            theta=theta,
            theta_power=theta_power,
            lr_power=lr_power,
            eps=eps,
            weight_decay=weight_decay,
        )
        super().__init__(params, defaults, impl)

    def init_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        super().init_state(p, state, group)
        state["exp_avg_sq"].fill_(group["eps"])

    def update_bucket(self, group: dict[str, Any], params: list[Tensor], step: int) -> None:
        beta, theta = group["beta"], group["theta"]
        if callable(beta):
            beta = float(beta(step))
            check_range("beta", beta, 0.0, 1.0, high_open=True)
        if callable(theta):
            theta = float(theta(step))
            check_range("theta", theta, 0.0, 1.0, high_open=True)
        else:
            theta = theta_schedule(step, theta, group["theta_power"])
        generic_adam(
            *self.kernel_inputs(params, *self.state_buffers),
            lr=alpha_schedule(step, group["lr"], group["lr_power"]),
            beta=float(beta),
            theta=float(theta),
            weight_decay=group["weight_decay"],
            floor=denominator_floor(params[0].dtype, 0.0),  # no eps in the denominator: sqrt(tiny) always
            impl=self.kernel_impl,
        )


def _single_tensor_generic_adam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    *,
    lr: float,
    beta: float,
    theta: float,
    weight_decay: float,
    floor: float,
) -> None:
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs, strict=True):
        p.mul_(1 - lr * weight_decay)
        m.lerp_(g, 1 - beta)
        v.mul_(theta).add_(g * g * (1 - theta))
        p.sub_(m / v.sqrt().clamp(min=floor) * lr)


def _multi_tensor_generic_adam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    *,
    lr: float,
    beta: float,
    theta: float,
    weight_decay: float,
    floor: float,
) -> None:
    if weight_decay != 0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta)
    torch._foreach_mul_(exp_avg_sqs, theta)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - theta)
    denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_clamp_min_(denom, floor)
    torch._foreach_addcdiv_(params, exp_avgs, denom, -lr)


def generic_adam(*tensors: list[Tensor], impl: str = "foreach", **hyperparams: float) -> None:
    """Functional Generic Adam over lists (params, grads, exp_avg, exp_avg_sq) with this step's α_t, β_t, θ_t."""
    run_kernel(impl, _single_tensor_generic_adam, _multi_tensor_generic_adam, tensors, hyperparams)
