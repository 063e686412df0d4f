"""``SAM``: the sharpness-aware step for a plain PyTorch / Accelerate loop (outside ``Trainer``).

It runs the same :class:`hf_adasam.sam_step.SAMStep` as ``SAMTrainer`` (one implementation, two
faces)::

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

from collections.abc import Callable
from typing import Any

import torch

from .sam_step import SAMStep, allreduce_grads
from .sharpness import DEFAULT_RHO

__all__ = ["SAM"]


class SAM(torch.optim.Optimizer):
    """Wrap ``base_optimizer`` with the two-pass step. Knobs as ``SAMTrainingArguments``' ``sam_*`` ones.

    ``rho=None`` takes SAM's default (0.05; ASAM's 0.5 with ``adaptive=True``). ``total_steps`` is
    AE-SAM's horizon T. Under DDP pass ``no_sync=ddp_model.no_sync``: both passes then skip DDP's
    all-reduce (per-replica perturbation) and the step's gradients are averaged once before the base step.
    """

    def __init__(
        self,
        base_optimizer: torch.optim.Optimizer,
        *,
        rho: float | None = None,
        adaptive: bool = False,
        eta: float | None = None,
        policy: str = "always",
        sync_perturbation: bool = False,
        total_steps: int = 1,
        no_sync: Callable[[], Any] | None = None,
        **policy_knobs: Any,
    ) -> None:
        if not isinstance(base_optimizer, torch.optim.Optimizer):
            raise TypeError(f"base_optimizer must be a torch.optim.Optimizer, not {type(base_optimizer).__name__}")
        self.base_optimizer = base_optimizer
        self.sam = SAMStep.build(
            rho=DEFAULT_RHO[bool(adaptive)] if rho is None else rho, adaptive=adaptive, eta=eta, policy=policy,
            sync_perturbation=sync_perturbation, total_steps=total_steps, **policy_knobs,
        )
        self.no_sync = no_sync
        self.steps = 0
        super().__init__([p for g in base_optimizer.param_groups for p in g["params"]], {})
        # share, not copy: schedulers and Accelerate see one set of groups and one state
        self.defaults = base_optimizer.defaults
        self.param_groups = base_optimizer.param_groups
        self.state = base_optimizer.state

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
        p = self.sam.perturbation
        return (f"SAM(rho={p.rho}, adaptive={p.adaptive}, policy={type(self.sam.policy).__name__}, "
                f"base={self.base_optimizer!r})")
