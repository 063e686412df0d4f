r"""Sharpness-aware pieces (spec §1, §3): the perturbation, and the policies that decide when a step
pays the second pass. Both work on lists of tensors and know nothing of ``Trainer``;
:mod:`hf_adasam.sam_step` composes them into a micro-step.

SAM (Foret et al. ICLR 2021) and ASAM (Kwon et al. ICML 2021), with :math:`g = \nabla L_B(w)`:

.. math::
    e_{\mathrm{SAM}} = \rho\, g / (\|g\| + 10^{-12}) \qquad
    e_{\mathrm{ASAM}} = \rho\, T^2 g / (\|T g\| + 10^{-12}),\ T = |w| + \eta \qquad
    g_{\mathrm{sam}} = \nabla L_B(w + e)

and :math:`w` is restored bit for bit from a saved copy before the base optimizer steps.
Policies: ``always``; AE-SAM (Jiang et al. ICLR 2023) takes a SAM step when :math:`\|g\|^2` lies in
the upper tail of its running Gaussian estimate; LookSAM (Liu et al. CVPR 2022) takes one every
:math:`k` steps and in between adds back the stored component :math:`g_v` of :math:`g_{\mathrm{sam}}`
orthogonal to :math:`g`; AE-LookSAM is LookSAM triggered by AE-SAM's test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["AESAM", "DEFAULT_RHO", "POLICIES", "Always", "EveryK", "LookSAM", "Perturbation", "make_policy"]

# spec §1: SAM's radius, and ASAM's (indexed by ``adaptive``)
DEFAULT_RHO: dict[bool, float] = {False: 0.05, True: 0.5}
_NORM_EPS = 1e-12


def _check(name: str, ok: bool, allowed: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"Invalid {name}: {value!r}; allowed {allowed}")


def global_norm(tensors: Sequence[Tensor]) -> Tensor:
    """‖·‖ over all tensors, accumulated in at least float32 (0-d tensor on the first tensor's device)."""
    if not tensors:
        return torch.zeros(())
    dtype = torch.promote_types(tensors[0].dtype, torch.float32)
    device = tensors[0].device
    norms = torch._foreach_norm(list(tensors), 2, dtype=dtype)
    return torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]))


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    dtype = torch.promote_types(a[0].dtype, torch.float32)
    return sum((x.to(dtype) * y.to(dtype)).sum() for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------
# the perturbation
# ----------------------------------------------------------------------------------------------
class Perturbation:
    """w ← w + e (SAM or ASAM) and back, bit-exactly. The copy of w is kept between steps (one per param)."""

    def __init__(self, rho: float = DEFAULT_RHO[False], adaptive: bool = False, eta: float = 0.01) -> None:
        _check("rho", isinstance(rho, (int, float)) and rho >= 0, "range is [0, inf)", rho)
        _check("eta", isinstance(eta, (int, float)) and eta >= 0, "range is [0, inf)", eta)
        self.rho, self.adaptive, self.eta = float(rho), bool(adaptive), float(eta)
        self._saved: list[Tensor] = []

    def grad_norm(self, grads: Sequence[Tensor]) -> Tensor:
        """‖g‖, the statistic the policies see (also logged)."""
        return global_norm(grads)

    @torch.no_grad()
    def perturb(self, params: list[Tensor], grads: list[Tensor], grad_norm: Tensor | None = None) -> float:
        """Save w, move to w + e; return ‖e‖. ``grads`` may carry any positive scale (fp16's loss scale)."""
        if len(self._saved) != len(params) or any(
            s.shape != p.shape or s.dtype != p.dtype or s.device != p.device
            for s, p in zip(self._saved, params, strict=True)
        ):
            self._saved = [torch.empty_like(p) for p in params]
        torch._foreach_copy_(self._saved, params)
        if not self.adaptive:
            norm = float(self.grad_norm(grads) if grad_norm is None else grad_norm)
            torch._foreach_add_(params, grads, alpha=self.rho / (norm + _NORM_EPS))
            return self.rho * norm / (norm + _NORM_EPS)
        t = torch._foreach_abs(params)
        torch._foreach_add_(t, self.eta)
        e = torch._foreach_mul(grads, t)  # T g
        norm = float(global_norm(e))
        torch._foreach_mul_(e, t)  # T² g
        torch._foreach_mul_(e, self.rho / (norm + _NORM_EPS))
        torch._foreach_add_(params, e)
        return float(global_norm(e))

    @torch.no_grad()
    def restore(self, params: list[Tensor]) -> None:
        torch._foreach_copy_(params, self._saved)


# ----------------------------------------------------------------------------------------------
# policies: decide(t, ‖g‖²) -> SAM step?; after_sam(g, g_sam); reuse(g) edits a plain step's g in place
# ----------------------------------------------------------------------------------------------
class Always:
    """Every micro-batch pays the second pass (plain SAM)."""

    name = "always"

    def decide(self, t: int, grad_sq_norm: float) -> bool:
        return True

    def after_sam(self, grads: list[Tensor], sam_grads: list[Tensor]) -> None:
        pass

    def reuse(self, grads: list[Tensor]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class EveryK(Always):
    """A SAM step at optimizer steps t = 0, k, 2k, ... (LookSAM's trigger)."""

    name = "every_k"

    def __init__(self, k: int = 5) -> None:
        _check("looksam_k", isinstance(k, int) and not isinstance(k, bool) and k >= 1, "values are integers >= 1", k)
        self.k = k

    def decide(self, t: int, grad_sq_norm: float) -> bool:
        return t % self.k == 0


class AESAM(Always):
    r"""AE-SAM's test (spec §3): SAM iff ‖g‖² ≥ μ_t + c_t σ_t, c_t = λ2 + (λ1 − λ2) t / T.

    μ and σ² are EMAs (factor δ) of ‖g‖² and of its squared deviation, updated before the test.
    """

    name = "ae"

    def __init__(self, total_steps: int, delta: float = 0.9, lambdas: tuple[float, float] = (-1.0, 1.0)) -> None:
        _check("ae_delta", isinstance(delta, (int, float)) and 0 <= delta < 1, "range is [0, 1)", delta)
        _check("ae_lambdas", isinstance(lambdas, (tuple, list)) and len(lambdas) == 2, "a pair (λ1, λ2)", lambdas)
        _check("total_steps", isinstance(total_steps, int) and total_steps >= 1, "values are integers >= 1",
               total_steps)
        self.total_steps, self.delta = total_steps, float(delta)
        self.lambdas = (float(lambdas[0]), float(lambdas[1]))
        self.mean = 0.0
        self.var = 0.0

    def threshold_coef(self, t: int) -> float:
        lam1, lam2 = self.lambdas
        return lam2 + (lam1 - lam2) * t / self.total_steps

    def decide(self, t: int, grad_sq_norm: float) -> bool:
        d = self.delta
        self.mean = d * self.mean + (1 - d) * grad_sq_norm
        self.var = d * self.var + (1 - d) * (grad_sq_norm - self.mean) ** 2
        return grad_sq_norm >= self.mean + self.threshold_coef(t) * math.sqrt(self.var)

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "var": self.var}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean, self.var = float(state["mean"]), float(state["var"])


class LookSAM(Always):
    r"""LookSAM (spec §3): on a SAM step store g_v = g_sam − (⟨g, g_sam⟩/‖g‖²) g, the part of g_sam
    orthogonal to g; on other steps use g + α (‖g‖/‖g_v‖) g_v. Global vectors, as in the paper.

    ``trigger`` decides which steps are SAM steps: :class:`EveryK` (LookSAM) or :class:`AESAM` (AE-LookSAM).
    """

    name = "looksam"

    def __init__(self, trigger: Always, alpha: float = 0.7) -> None:
        _check("looksam_alpha", isinstance(alpha, (int, float)) and alpha >= 0, "range is [0, inf)", alpha)
        self.trigger, self.alpha = trigger, float(alpha)
        self.g_v: list[Tensor] | None = None

    def decide(self, t: int, grad_sq_norm: float) -> bool:
        return self.trigger.decide(t, grad_sq_norm)

    @torch.no_grad()
    def after_sam(self, grads: list[Tensor], sam_grads: list[Tensor]) -> None:
        proj = _dot(grads, sam_grads) / global_norm(grads).square().clamp(min=_NORM_EPS**2)
        # out-of-place: g_v is new memory, g_sam stays the step's direction
        self.g_v = torch._foreach_sub(list(sam_grads), torch._foreach_mul(list(grads), proj.to(grads[0].dtype)))

    @torch.no_grad()
    def reuse(self, grads: list[Tensor]) -> None:
        if self.g_v is None:  # AE-LookSAM before its first SAM step: a plain step
            return
        g_v = [v.to(g.device, g.dtype) for v, g in zip(self.g_v, grads, strict=True)]
        coef = self.alpha * float(global_norm(grads)) / (float(global_norm(g_v)) + _NORM_EPS)
        torch._foreach_add_(grads, g_v, alpha=coef)

    def state_dict(self) -> dict[str, Any]:
        return {"trigger": self.trigger.state_dict(), "g_v": self.g_v}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trigger.load_state_dict(state["trigger"])
        self.g_v = state["g_v"]


POLICIES = ("always", "ae", "looksam", "ae_looksam")


def make_policy(
    name: str = "always",
    *,
    total_steps: int = 1,
    ae_delta: float = 0.9,
    ae_lambdas: tuple[float, float] = (-1.0, 1.0),
    looksam_k: int = 5,
    looksam_alpha: float = 0.7,
) -> Always:
    """The policy called ``name`` (one of :data:`POLICIES`); knobs of other policies are ignored."""
    _check("policy", name in POLICIES, f"values are {', '.join(POLICIES)}", name)
    if name == "always":
        return Always()
    if name == "ae":
        return AESAM(total_steps, ae_delta, ae_lambdas)
    trigger = EveryK(looksam_k) if name == "looksam" else AESAM(total_steps, ae_delta, ae_lambdas)
    return LookSAM(trigger, looksam_alpha)
