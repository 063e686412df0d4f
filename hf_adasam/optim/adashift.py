r"""AdaShift (Zhou et al. ICLR 2019, "AdaShift: Decorrelation and Convergence of Adaptive Learning
Rate Methods", arXiv 1810.00143); follows the authors' code (spec §7).

The second moment is fed the gradient that left a window of the last :math:`n` gradients, so it is
independent of the gradients in the first moment. Steps :math:`1..n` only fill the window; for
:math:`t > n`, with :math:`w_i = \beta_1^i / \sum_{j<n} \beta_1^j`:

.. math::
    m_t = \textstyle\sum_{i<n} w_i\, g_{t-i} \qquad
    v_t = \beta_2 v_{t-1} + (1-\beta_2)\, \varphi(g_{t-n}^2) \\
    x \leftarrow x (1 - \gamma\lambda) - \gamma\, m_t / \left(\sqrt{v_t / (1-\beta_2^{t-n})} + \epsilon\right)

:math:`\varphi` is the max (default) or mean over the whole tensor, giving one :math:`v` per tensor,
or ``"none"`` for an element-wise :math:`v`. Weight decay is decoupled (the spec is silent; this is
the convention of ``Trainer``'s ``weight_decay``) and, like the step, starts at :math:`t = n+1`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ._base import KernelOptimizer, check_betas, check_common, run_kernel

__all__ = ["AdaShift", "adashift"]

PHIS = ("max", "mean", "none")


class AdaShift(KernelOptimizer):
    """AdaShift (spec §7): Adam with a temporally shifted second moment over a window of ``n`` gradients."""

    state_buffers = ("exp_avg",)

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
            raise ValueError(f"Invalid n: {n!r}; allowed values are integers >= 1")
        if phi not in PHIS:
            raise ValueError(f"Invalid phi: {phi!r}; allowed values are {', '.join(PHIS)}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, n=n, phi=phi)
        super().__init__(params, defaults, impl)

    def init_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        super().init_state(p, state, group)
        # exp_avg holds m_t itself; the window starts at zero, so m_t's running update needs no
        # special case while it fills (the gradient leaving the window is 0 for t <= n)
        state["exp_avg_sq"] = torch.zeros_like(p) if group["phi"] == "none" else p.new_zeros(())
        # n separate tensors, not one (n, *shape) tensor: the kernel gets the slot's tensor, so the
        # compiled kernel sees the same input metadata at every step (a slot index would recompile)
        state["grad_window"] = [torch.zeros_like(p, memory_format=torch.preserve_format) for _ in range(group["n"])]

    def update_bucket(self, group: dict[str, Any], params: list[Tensor], step: int) -> None:
        beta1, beta2 = group["betas"]
        n = group["n"]
        slot = (step - 1) % n  # holds g_{t-n}, written n steps ago; derived from step, so no pointer in state
        update = step > n
        adashift(
            params,
            [p.grad for p in params],
            *self.buffers(params, "exp_avg", "exp_avg_sq"),
            [self.state[p]["grad_window"][slot] for p in params],
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            oldest_weight=beta1**n,
            window_sum=sum(beta1**j for j in range(n)),
            bias_correction2=1 - beta2 ** (step - n) if update else 1.0,
            phi=group["phi"],
            update=update,
            impl=self.impl,
        )


def _phi(sq: Tensor, phi: str) -> Tensor:
    if phi == "max":
        return sq.amax()
    if phi == "mean":
        return sq.mean()
    return sq


def _single_tensor_adashift(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    oldest_grads: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    oldest_weight: float,
    window_sum: float,
    bias_correction2: float,
    phi: str,
    update: bool,
) -> None:
    for p, g, m, v, old in zip(params, grads, exp_avgs, exp_avg_sqs, oldest_grads, strict=True):
        if update:
            v.mul_(beta2).add_(_phi(old * old, phi) * (1 - beta2))
        # m_t = sum_i w_i g_{t-i} kept as a running sum instead of re-reading the n stored gradients:
        # m_t = beta1 m_{t-1} + (g_t - beta1^n g_{t-n}) / sum_j beta1^j. A rounding error is multiplied
        # by beta1 < 1 at every later step, so errors stay bounded (no drift from the exact window sum).
        m.mul_(beta1).add_((g - old * oldest_weight) / window_sum)
        old.copy_(g)  # g_t takes the slot of g_{t-n}
        if update:
            p.mul_(1 - lr * weight_decay)
            p.sub_(m / ((v / bias_correction2).sqrt() + eps) * lr)


def _multi_tensor_adashift(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    oldest_grads: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    oldest_weight: float,
    window_sum: float,
    bias_correction2: float,
    phi: str,
    update: bool,
) -> None:
    if update:
        torch._foreach_mul_(exp_avg_sqs, beta2)
        if phi == "none":
            torch._foreach_addcmul_(exp_avg_sqs, oldest_grads, oldest_grads, 1 - beta2)
        else:  # max(g^2) = (max|g|)^2 and mean(g^2) = ||g||^2 / numel: one fused reduction per tensor
            stat = torch._foreach_norm(oldest_grads, float("inf") if phi == "max" else 2)
            torch._foreach_mul_(stat, stat)
            if phi == "mean":
                torch._foreach_div_(stat, [float(g.numel()) for g in oldest_grads])
            torch._foreach_add_(exp_avg_sqs, stat, alpha=1 - beta2)
    # running window sum, see _single_tensor_adashift
    torch._foreach_mul_(exp_avgs, beta1)
    torch._foreach_add_(exp_avgs, grads, alpha=1 / window_sum)
    torch._foreach_add_(exp_avgs, oldest_grads, alpha=-oldest_weight / window_sum)
    torch._foreach_copy_(oldest_grads, grads)
    if update:
        if weight_decay != 0:
            torch._foreach_mul_(params, 1 - lr * weight_decay)
        denom = torch._foreach_div(exp_avg_sqs, bias_correction2)
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, eps)
        # with a scalar phi, denom holds 0-d tensors that broadcast over their param
        torch._foreach_addcdiv_(params, exp_avgs, denom, -lr)


def adashift(*tensors: list[Tensor], impl: str = "foreach", **hyper: Any) -> None:
    """Functional AdaShift over lists (params, grads, exp_avg, exp_avg_sq, oldest window gradient)."""
    run_kernel(impl, _single_tensor_adashift, _multi_tensor_adashift, tensors, hyper)
