r"""The perturbation (docs/algorithms.md#sam-and-asam): w ← w + e for SAM or ASAM, and back, bit for bit.

SAM (Foret et al. ICLR 2021) and ASAM (Kwon et al. ICML 2021), with :math:`g = \nabla L_B(w)`:

.. math::
    e_{\mathrm{SAM}} = \rho\, g / (\|g\| + 10^{-12}) \qquad
    e_{\mathrm{ASAM}} = \rho\, T^2 g / (\|T g\| + 10^{-12}),\ T = |w| + \eta

ASAM's scope: ``"all"`` (the paper) scales every trainable tensor; ``"weights"`` (the official ASAM
code) scales only tensors whose parameter name contains ``"weight"``, and the others (biases, norm
shifts) get :math:`T = 1`. The norms are global over all tensors in both cases; under FSDP2 the
parameters are DTensors and e is computed and applied shard by shard, with the norms summed over the
shards (:mod:`.sharding`), so the saved copy of w is sharded too.

Like the optimizers, the tensor work has a foreach form and a compiled one (``impl``, the optimizers' rule:
:class:`~hf_adasam.optim._base.ImplChoice`; default ``"auto"``). Compiled, each op is one call over all the
tensors, whatever their number (:mod:`hf_adasam.optim._arena`): ‖g‖ (one read of g); SAM's save-and-move (w read
once: the copy written, w + e written); ASAM's two norms ‖T g‖ and ‖T² g‖ (one read of w and g, so ‖e‖ =
ρ‖T² g‖ / ‖T g‖ needs no pass over e); its save-and-move; the restore. Sharded parameters (FSDP2) use the
foreach form.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from ..optim._arena import ELEM, PerTensor
from ..optim._base import ImplChoice, resolve_impl, run_kernel, run_reduction
from ..sharding import LOCAL, Reduction, state_bytes
from .config import SAMConfig

__all__ = ["Perturbation", "global_norm"]

NORM_EPS = 1e-12
_D = SAMConfig()  # the knobs' defaults, read from the one place they live


def global_norm(tensors: Sequence[Tensor]) -> Tensor:
    """‖·‖ over all tensors, accumulated in at least float32 (0-d tensor on the first tensor's device)."""
    return LOCAL.norm(tensors)


class Perturbation(ImplChoice):
    """w ← w + e (SAM or ASAM) and back, bit-exactly. The copy of w is kept between steps (one per param).

    With ``asam_scope="weights"`` it needs the parameters' names: :meth:`set_names` before the first step.
    ``impl``: ``"auto"`` (default, ``$HF_ADASAM_IMPL``), ``"compiled"`` or ``"foreach"``.
    """

    def __init__(self, rho: float, adaptive: bool = _D.adaptive, eta: float = _D.eta,
                 asam_scope: str = _D.asam_scope, *, impl: str | None = None) -> None:
        self.rho, self.adaptive, self.eta, self.asam_scope = float(rho), bool(adaptive), float(eta), asam_scope
        self.impl = resolve_impl(impl)
        if self.impl == "single":
            self.impl = "foreach"  # the ops have no separate reference loop: foreach is theirs
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

    def _compiled(self, tensors: Sequence[Tensor], reduce: Reduction) -> bool:
        return self.kernel_impl == "compiled" and not reduce.sharded and bool(tensors)

    def grad_norm(self, grads: Sequence[Tensor], reduce: Reduction = LOCAL) -> Tensor:
        """‖g‖, the statistic the policies see (also logged)."""
        with self.timed_step():
            if self._compiled(grads, reduce):
                found = run_reduction(_arena_sum_of_squares, [list(grads)], (ELEM,), {})
                if found is not None:
                    return found.sqrt().to(torch.promote_types(grads[0].dtype, torch.float32))
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
        with self.timed_step():
            if self._compiled(params, reduce):
                return self._perturb_compiled(params, grads, grad_norm, scaled)
            return self._perturb_foreach(params, grads, grad_norm, scaled, reduce)

    def _perturb_compiled(self, params: list[Tensor], grads: list[Tensor], grad_norm: Tensor | None,
                          scaled: list[bool]) -> float:
        if not self.adaptive:
            norm = float(self.grad_norm(grads) if grad_norm is None else grad_norm)
            run_kernel("compiled", _single_tensor_move, _multi_tensor_move, [params, grads, self._saved],
                       dict(scale=self.rho / (norm + NORM_EPS)))
            return self.rho * norm / (norm + NORM_EPS)
        weight = PerTensor(torch.tensor([1.0 if s else 0.0 for s in scaled], dtype=torch.float64,
                                        device=params[0].device))
        found = run_reduction(_arena_asam_norms, [params, grads], (ELEM, ELEM), dict(weight=weight.values,
                                                                                     eta=self.eta))
        if found is None:
            return self._perturb_foreach(params, grads, None, scaled, LOCAL)
        tg, t2g = (float(x) for x in found)
        norm = tg**0.5
        run_kernel("compiled", _single_tensor_asam_move, _multi_tensor_asam_move, [params, grads, self._saved],
                   dict(weight=weight, eta=self.eta, scale=self.rho / (norm + NORM_EPS)))
        return self.rho * t2g**0.5 / (norm + NORM_EPS)

    def _perturb_foreach(self, params: list[Tensor], grads: list[Tensor], grad_norm: Tensor | None,
                         scaled: list[bool], reduce: Reduction) -> float:
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
        params = reduce.local(params)
        with self.timed_step():
            if self._compiled(params, reduce):
                run_kernel("compiled", _single_tensor_restore, _multi_tensor_restore, [params, self._saved], {})
            else:
                torch._foreach_copy_(params, self._saved)


# ----------------------------------------------------------------------------------------------
# kernels of the compiled form (single-tensor kernels, run by hf_adasam.optim._base.run_kernel over all tensors at
# once), with their foreach twins (tensors the arena cannot take)
# ----------------------------------------------------------------------------------------------
def _arena_sum_of_squares(blocks: list[tuple[Tensor, Tensor]], lay: tuple[Tensor, ...], numels: Tensor) -> Tensor:
    """Σ g² over every tensor (each row summed first, in at least float32; the rows in float64)."""
    ((rows, tail),) = blocks
    acc = torch.promote_types(rows.dtype, torch.float32)
    return rows.to(acc).square().sum(1).sum(dtype=torch.float64) + tail.to(torch.float64).square().sum()


def _arena_asam_norms(blocks: list[tuple[Tensor, Tensor]], lay: tuple[Tensor, ...], numels: Tensor, *,
                      weight: Tensor, eta: float) -> Tensor:
    """Σ (T g)² and Σ (T² g)² (ASAM's ‖T g‖ and ‖e‖ ρ⁻¹‖T g‖) with T = |w| + η where ``weight`` is 1, else 1."""
    (w_rows, w_tail), (g_rows, g_tail) = blocks
    acc = torch.promote_types(g_rows.dtype, torch.float32)
    out = []
    for w, g, on in ((w_rows, g_rows, weight[lay[0]].unsqueeze(1)), (w_tail, g_tail, weight[lay[2]])):
        t = torch.where(on > 0, w.to(acc).abs() + eta, 1.0)
        tg = g.to(acc) * t
        tg_sq = tg.square()
        t2g_sq = (tg * t).square()
        out.append(torch.stack([tg_sq.sum(-1).sum(dtype=torch.float64), t2g_sq.sum(-1).sum(dtype=torch.float64)]))
    return out[0] + out[1]


def _single_tensor_move(params: list[Tensor], grads: list[Tensor], saved: list[Tensor], *, scale: float) -> None:
    """SAM: save w, then w ← w + scale g."""
    for p, g, s in zip(params, grads, saved, strict=True):
        s.copy_(p)
        p.add_(g * scale)


def _multi_tensor_move(params: list[Tensor], grads: list[Tensor], saved: list[Tensor], *, scale: float) -> None:
    torch._foreach_copy_(saved, params)
    torch._foreach_add_(params, grads, alpha=scale)


def _single_tensor_asam_move(params: list[Tensor], grads: list[Tensor], saved: list[Tensor], *, weight: list[Tensor],
                             eta: float, scale: float) -> None:
    """ASAM: save w, then w ← w + scale T² g, T = |w| + η (where ``weight`` is 1; else T = 1)."""
    for p, g, s, on in zip(params, grads, saved, weight, strict=True):
        t = torch.where(on > 0, p.abs() + eta, 1.0).to(p.dtype)
        s.copy_(p)
        p.add_(g * t * t * scale)


def _multi_tensor_asam_move(params: list[Tensor], grads: list[Tensor], saved: list[Tensor], *, weight: list[Tensor],
                            eta: float, scale: float) -> None:
    _single_tensor_asam_move(params, grads, saved, weight=weight, eta=eta, scale=scale)


def _single_tensor_restore(params: list[Tensor], saved: list[Tensor]) -> None:
    for p, s in zip(params, saved, strict=True):
        p.copy_(s)


def _multi_tensor_restore(params: list[Tensor], saved: list[Tensor]) -> None:
    torch._foreach_copy_(params, saved)
