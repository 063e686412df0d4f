r"""The perturbation (spec §1): w ← w + e for SAM or ASAM, and back, bit for bit.

SAM (Foret et al. ICLR 2021) and ASAM (Kwon et al. ICML 2021), with :math:`g = \nabla L_B(w)`:

.. math::
    e_{\mathrm{SAM}} = \rho\, g / (\|g\| + 10^{-12}) \qquad
    e_{\mathrm{ASAM}} = \rho\, T^2 g / (\|T g\| + 10^{-12}),\ T = |w| + \eta

ASAM's scope: ``"all"`` (the paper) scales every trainable tensor; ``"weights"`` (the official ASAM
code) scales only tensors whose parameter name contains ``"weight"``, and the others (biases, norm
shifts) get :math:`T = 1`. The norms are global over all tensors in both cases; under FSDP2 the
parameters are DTensors and e is computed and applied shard by shard, with the norms summed over the
shards (:mod:`.sharding`), so the saved copy of w is sharded too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from ..sharding import LOCAL, Reduction, state_bytes
from .config import SAMConfig

__all__ = ["Perturbation", "global_norm"]

NORM_EPS = 1e-12
_D = SAMConfig()  # the knobs' defaults, read from the one place they live


def global_norm(tensors: Sequence[Tensor]) -> Tensor:
    """‖·‖ over all tensors, accumulated in at least float32 (0-d tensor on the first tensor's device)."""
    return LOCAL.norm(tensors)


class Perturbation:
    """w ← w + e (SAM or ASAM) and back, bit-exactly. The copy of w is kept between steps (one per param).

    With ``asam_scope="weights"`` it needs the parameters' names: :meth:`set_names` before the first step.
    """

    def __init__(self, rho: float, adaptive: bool = _D.adaptive, eta: float = _D.eta,
                 asam_scope: str = _D.asam_scope) -> None:
        self.rho, self.adaptive, self.eta, self.asam_scope = float(rho), bool(adaptive), float(eta), asam_scope
        self._saved: list[Tensor] = []
        self._named: dict[int, str] | None = None

    @classmethod
    def from_config(cls, config: SAMConfig) -> Perturbation:
        return cls(config.rho or 0.0, config.adaptive, config.eta, config.asam_scope)

    @property
    def needs_names(self) -> bool:
        return self.adaptive and self.asam_scope == "weights"

    def set_names(self, named_parameters: Iterable[tuple[str, Tensor]]) -> None:
        """The parameters' names, for ``asam_scope="weights"`` (T = |w| + η where the name contains "weight")."""
        self._named = {id(p): n for n, p in named_parameters}

    def scaled(self, params: Sequence[Tensor]) -> list[bool]:
        if not self.needs_names:
            return [True] * len(params)
        if self._named is None or any(id(p) not in self._named for p in params):
            raise ValueError(
                "asam_scope='weights' scales only tensors whose parameter name contains 'weight', so it needs the "
                "names: pass named_parameters=model.named_parameters() to hf_adasam.SAM (SAMTrainer does it), or "
                f"use asam_scope='all' (default {_D.asam_scope!r})")
        return ["weight" in self._named[id(p)] for p in params]

    def grad_norm(self, grads: Sequence[Tensor], reduce: Reduction = LOCAL) -> Tensor:
        """‖g‖, the statistic the policies see (also logged)."""
        return reduce.norm(grads)

    @property
    def state_bytes(self) -> int:
        """Bytes this rank holds for the saved copy of w (its shards only under FSDP2)."""
        return state_bytes(self._saved)

    @torch.no_grad()
    def perturb(self, params: list[Tensor], grads: list[Tensor], grad_norm: Tensor | None = None,
                reduce: Reduction = LOCAL) -> float:
        """Save w, move to w + e; return ‖e‖. ``grads`` may carry any positive scale (fp16's loss scale).

        ``reduce`` makes the norms global over shards (FSDP2); w is then saved and moved shard by shard."""
        scaled = self.scaled(params)
        params, grads = reduce.local(params), reduce.local(grads)
        if len(self._saved) != len(params) or any(
            s.shape != p.shape or s.dtype != p.dtype or s.device != p.device
            for s, p in zip(self._saved, params, strict=True)
        ):
            self._saved = [torch.empty_like(p) for p in params]
        torch._foreach_copy_(self._saved, params)
        if not self.adaptive:
            norm = float(self.grad_norm(grads, reduce) if grad_norm is None else grad_norm)
            torch._foreach_add_(params, grads, alpha=self.rho / (norm + NORM_EPS))
            return self.rho * norm / (norm + NORM_EPS)
        idx = [i for i, s in enumerate(scaled) if s]
        t = torch._foreach_abs([params[i] for i in idx])
        torch._foreach_add_(t, self.eta)
        tg = iter(torch._foreach_mul([grads[i] for i in idx], t) if idx else [])  # T g
        e = [next(tg) if s else g.clone() for s, g in zip(scaled, grads, strict=True)]  # T = 1 where not scaled
        norm = float(reduce.norm(e))
        if idx:
            torch._foreach_mul_([e[i] for i in idx], t)  # T² g
        torch._foreach_mul_(e, self.rho / (norm + NORM_EPS))
        torch._foreach_add_(params, e)
        return float(reduce.norm(e))

    @torch.no_grad()
    def restore(self, params: list[Tensor], reduce: Reduction = LOCAL) -> None:
        torch._foreach_copy_(reduce.local(params), self._saved)
