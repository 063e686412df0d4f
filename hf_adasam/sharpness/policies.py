r"""When a step pays the second pass (docs/algorithms.md#policies). Policies work on lists of tensors and know nothing
of ``Trainer``; :mod:`hf_adasam.sharpness.step` composes them with the perturbation.

``always`` (SAM); AE-SAM (Jiang et al. ICLR 2023) takes a SAM step when :math:`\|g\|^2` lies in the
upper tail of its running Gaussian estimate; LookSAM (Liu et al. CVPR 2022) takes one every
:math:`k` steps and in between adds back the stored component :math:`g_v` of :math:`g_{\mathrm{sam}}`
orthogonal to :math:`g`; AE-LookSAM is LookSAM triggered by AE-SAM's test. The knobs' defaults
and checks live in :class:`~hf_adasam.sharpness.config.SAMConfig`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor

from ..sharding import LOCAL, Reduction
from .config import POLICIES, SAMConfig
from .perturbation import NORM_EPS as _NORM_EPS

__all__ = ["AESAM", "POLICIES", "Always", "EveryK", "LookSAM", "Policy", "make_policy"]

_D = SAMConfig()  # the knobs' defaults, read from the one place they live


class Policy:
    """When a micro-batch pays the second pass, and what a plain step does instead.

    :class:`~hf_adasam.sharpness.step.SAMStep` calls, per micro-batch, :meth:`decide` with the pass-1 ‖g‖²; after
    a second pass :meth:`after_sam` with g and g_sam; otherwise :meth:`reuse`, which may edit g in place. ``reduce``
    makes dot products and norms global over shards (FSDP2): stored vectors are then kept shard by shard.
    Build one with :meth:`from_config`.
    """

    name: str

    def decide(self, t: int, grad_sq_norm: float) -> bool:
        """Whether optimizer step ``t``'s micro-batch, whose pass-1 gradient has ‖g‖² ``grad_sq_norm``, pays pass 2."""
        raise NotImplementedError

    def after_sam(self, grads: list[Tensor], sam_grads: list[Tensor], reduce: Reduction = LOCAL) -> None:
        """After a second pass: ``grads`` is g (pass 1), ``sam_grads`` g_sam (pass 2, the step's direction)."""

    def reuse(self, grads: list[Tensor], reduce: Reduction = LOCAL) -> None:
        """A plain step: the direction is ``grads`` (g), edited in place if the policy reuses something."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    @staticmethod
    def from_config(config: SAMConfig, total_steps: int = 1) -> Policy:
        """The policy ``config.policy`` names, with ``config``'s knobs; ``total_steps`` is AE-SAM's horizon T."""
        if config.policy == "always":
            return Always()
        if config.policy == "ae":
            return AESAM(total_steps, config.ae_delta, config.ae_lambdas)
        if config.policy == "looksam":
            return LookSAM(EveryK(config.looksam_k), config.looksam_alpha)
        return LookSAM(AESAM(total_steps, config.ae_delta, config.ae_lambdas), config.looksam_alpha)  # ae_looksam


class Always(Policy):
    """Every micro-batch pays the second pass (plain SAM)."""

    name = "always"

    def decide(self, t: int, grad_sq_norm: float) -> bool:
        return True


class EveryK(Policy):
    """A SAM step at optimizer steps t = 0, k, 2k, ... (LookSAM's trigger)."""

    name = "every_k"

    def __init__(self, k: int = _D.looksam_k) -> None:
        self.k = k

    def decide(self, t: int, grad_sq_norm: float) -> bool:
        return t % self.k == 0


class AESAM(Policy):
    r"""AE-SAM's test (docs/algorithms.md#ae-sam): SAM iff ‖g‖² ≥ μ_t + c_t σ_t, c_t = λ2 + (λ1 − λ2) t / T.

    μ and σ² are EMAs (factor δ) of ‖g‖² and of its squared deviation, updated before the test.
    """

    name = "ae"

    def __init__(self, total_steps: int, delta: float = _D.ae_delta,
                 lambdas: tuple[float, float] = _D.ae_lambdas) -> None:
        if not (isinstance(total_steps, int) and total_steps >= 1):
            raise ValueError(f"total_steps={total_steps!r} is invalid: allowed an integer >= 1 (AE-SAM's horizon T, "
                             "the number of optimizer steps)")
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


class LookSAM(Policy):
    r"""LookSAM (docs/algorithms.md#looksam): on a SAM step store g_v = g_sam − (⟨g, g_sam⟩/‖g‖²) g, the part of g_sam
    orthogonal to g; on other steps use g + α (‖g‖/‖g_v‖) g_v. Global vectors, as in the paper.

    ``trigger`` decides which steps are SAM steps: :class:`EveryK` (LookSAM) or :class:`AESAM` (AE-LookSAM).
    """

    name = "looksam"

    def __init__(self, trigger: Policy, alpha: float = _D.looksam_alpha) -> None:
        self.trigger, self.alpha = trigger, float(alpha)
        self.g_v: list[Tensor] | None = None

    def decide(self, t: int, grad_sq_norm: float) -> bool:
        return self.trigger.decide(t, grad_sq_norm)

    @torch.no_grad()
    def after_sam(self, grads: list[Tensor], sam_grads: list[Tensor], reduce: Reduction = LOCAL) -> None:
        grads, sam_grads = reduce.local(grads), reduce.local(sam_grads)
        proj = reduce.dot(grads, sam_grads) / reduce.norm(grads).square().clamp(min=_NORM_EPS**2)
        # out-of-place: g_v is new memory, g_sam stays the step's direction
        self.g_v = torch._foreach_sub(list(sam_grads), torch._foreach_mul(list(grads), proj.to(grads[0].dtype)))

    @torch.no_grad()
    def reuse(self, grads: list[Tensor], reduce: Reduction = LOCAL) -> None:
        if self.g_v is None:  # AE-LookSAM before its first SAM step: a plain step
            return
        grads = reduce.local(grads)
        g_v = [v.to(g.device, g.dtype) for v, g in zip(self.g_v, grads, strict=True)]
        coef = self.alpha * float(reduce.norm(grads)) / (float(reduce.norm(g_v)) + _NORM_EPS)
        torch._foreach_add_(grads, g_v, alpha=coef)

    def state_dict(self) -> dict[str, Any]:
        return {"trigger": self.trigger.state_dict(), "g_v": self.g_v}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trigger.load_state_dict(state["trigger"])
        self.g_v = state["g_v"]


def make_policy(name: str = _D.policy, *, total_steps: int = 1, **knobs: Any) -> Policy:
    """Deprecated: ``Policy.from_config(SAMConfig(policy=name, **knobs), total_steps)``, which this calls."""
    warnings.warn("hf_adasam.sharpness.make_policy is deprecated: use Policy.from_config(SAMConfig(policy=..., ...), "
                  "total_steps)", DeprecationWarning, stacklevel=2)
    return Policy.from_config(SAMConfig(policy=name, **knobs), total_steps)
