"""``SAM``: the sharpness-aware step for a plain PyTorch / Accelerate loop (outside ``Trainer``).

It runs the same :class:`hf_adasam.sharpness.step.SAMStep` as ``SAMTrainer`` (one implementation, two
faces); its knobs are :class:`~hf_adasam.sharpness.config.SAMConfig`'s::

    base = hf_adasam.AdaSAM(model.parameters(), lr=1e-3)
    opt = hf_adasam.SAM(base, rho=0.05, policy="ae", total_steps=1000)

    def closure():
        loss = loss_fn(model(x), y)
        loss.backward()          # or accelerator.backward(loss)
        return loss

    opt.zero_grad()
    loss = opt.step(closure)     # pass 1, e, pass 2 (if the policy pays it), restore w, base step

``SAM`` shares the base optimizer's ``param_groups`` and ``state`` (an LR scheduler built on either
drives both), and its ``state_dict`` holds the base optimizer's and the policy's, so a checkpoint
resumes both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from .config import SAMConfig
from .step import SAMStep, allreduce_grads

__all__ = ["SAM"]

_DEFAULTS = SAMConfig()
_KNOBS = frozenset(f.name for f in SAMConfig.knobs(trainer=False))  # SAM(...)'s knob keywords


def _set(knobs: dict[str, Any]) -> dict[str, Any]:
    """The knobs set away from SAMConfig's defaults (the others count as not given: they change nothing, so
    :meth:`SAMConfig.resolve` has nothing to warn about them); a value of another type is kept, to be checked."""
    return {k: v for k, v in knobs.items()
            if not (type(v) is type(getattr(_DEFAULTS, k)) and v == getattr(_DEFAULTS, k))}


class SAM(torch.optim.Optimizer):
    """Wrap ``base_optimizer`` with the two-pass step. The keywords from ``rho`` to ``sync_perturbation`` are
    :class:`SAMConfig`'s knobs, with its defaults and checks; ``rho=None`` takes SAM's (ASAM's with
    ``adaptive=True``). Another keyword is refused with a ``ValueError`` that lists the knobs.

    ``total_steps`` is AE-SAM's horizon T. ``named_parameters`` (``model.named_parameters()``) gives the
    parameters' names, which ``asam_scope="weights"`` needs. Under DDP pass ``no_sync=ddp_model.no_sync``:
    both passes then skip DDP's all-reduce (per-replica perturbation) and the step's gradients are
    averaged once before the base step. Under FSDP2 (a model under ``fully_shard``) pass no ``no_sync``: each pass
    reduce-scatters, the perturbation comes from the averaged gradient and is applied shard by shard
    (:mod:`hf_adasam.sharding`).
    """

    def __init__(
        self,
        base_optimizer: torch.optim.Optimizer,
        *,
        total_steps: int = 1,
        no_sync: Callable[[], Any] | None = None,
        named_parameters: Iterable[tuple[str, torch.Tensor]] | None = None,
        # generated from SAMConfig (python -m tests._sam_declarations; tests/test_sam_config.py checks it): begin
        rho: float | None = None,
        adaptive: bool = False,
        eta: float = 0.01,
        asam_scope: str = "all",
        policy: str = "always",
        ae_delta: float = 0.9,
        ae_lambdas: tuple[float, float] = (-1.0, 1.0),
        looksam_k: int = 5,
        looksam_alpha: float = 0.7,
        sync_perturbation: bool = False,
        # generated: end
        **unknown: Any,
    ) -> None:
        if not isinstance(base_optimizer, torch.optim.Optimizer):
            raise TypeError(f"base_optimizer must be a torch.optim.Optimizer, not {type(base_optimizer).__name__}")
        if "exact_accumulation" in unknown:
            raise ValueError("exact_accumulation is a SAMTrainer knob: with hf_adasam.SAM the closure is the batch "
                             "(run the accumulated micro-batches inside one closure for one perturbation)")
        knobs = {name: value for name, value in locals().items() if name in _KNOBS}  # the knob keywords above
        self.config = SAMConfig.resolve({**_set(knobs), **unknown}, sam_asked=True, source="SAM: ")
        self.base_optimizer = base_optimizer
        self.sam = SAMStep.from_config(self.config, total_steps=total_steps)
        if named_parameters is not None:
            self.sam.perturbation.set_names(named_parameters)
        self.no_sync = no_sync
        self.steps = 0
        super().__init__([p for g in base_optimizer.param_groups for p in g["params"]], {})
        # share, not copy: schedulers and Accelerate see one set of groups and one state
        self.defaults = base_optimizer.defaults
        self.param_groups = base_optimizer.param_groups
        self.state = base_optimizer.state
        if self.sam.perturbation.needs_names:
            self.sam.perturbation.scaled(self._params())  # fail now, not at the first step

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"] if p.requires_grad]

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One optimizer step; ``closure`` runs forward and backward at the current weights."""
        if closure is None:
            raise RuntimeError(
                "SAM.step needs a closure that computes the loss and calls backward(): the second pass re-runs it "
                "at w + e. Inside transformers.Trainer use hf_adasam.SAMTrainer instead."
            )
        params = self._params()
        kwargs = {"no_sync": self.no_sync} if self.no_sync is not None else {}
        with torch.enable_grad():
            loss = self.sam.micro_step(params, closure, t=self.steps, **kwargs)
        if self.no_sync is not None:  # every pass skipped DDP's all-reduce: average once, as DDP would
            allreduce_grads(params)
        self.base_optimizer.step()
        self.steps += 1
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {"base": self.base_optimizer.state_dict(), "sam": self.sam.state_dict(), "steps": self.steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        self.base_optimizer.load_state_dict(state_dict["base"])
        self.sam.load_state_dict(state_dict["sam"])
        self.steps = int(state_dict["steps"])

    def __repr__(self) -> str:
        knobs = ", ".join(f"{k}={v!r}" for k, v in self.config.as_dict(active_only=True).items())
        return f"SAM({knobs}, base={self.base_optimizer!r})"

