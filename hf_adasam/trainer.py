"""``SAMTrainer``: the sharpness-aware two-pass step inside ``Trainer.training_step``.

Everything else stays the Trainer's: the loop, gradient accumulation and its loss scaling,
clipping, the optimizer and scheduler steps, mixed precision, logging, checkpoints. Each
micro-batch runs ``Trainer.training_step`` once (plain) or twice (SAM) through
:class:`hf_adasam.sam_step.SAMStep`, so pass 2's gradients are scaled and accumulated exactly as
plain gradients are.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer, TrainingArguments

from .registry import resolve_sam_settings
from .sam_step import SAMStep, allreduce_grads

logger = logging.getLogger(__name__)

__all__ = ["SAMSeq2SeqTrainer", "SAMSeq2SeqTrainingArguments", "SAMTrainer", "SAMTrainerMixin", "SAMTrainingArguments"]

SAM_STATE_NAME = "sam_state_rank{rank}.pt"


@dataclass
class SAMArgumentsMixin:
    """SAM knobs; ``None`` means "the method's default" (spec §1, §3), or ``optim_args``' value."""

    sam_rho: float | None = field(default=None, metadata={
        "help": "SAM radius ρ. Default: 0.05 (0.5 with --sam_adaptive) for --optim adasam, else 0 (SAM off)."})
    sam_adaptive: bool | None = field(default=None, metadata={"help": "ASAM: scale the perturbation by |w|+η."})
    sam_eta: float | None = field(default=None, metadata={"help": "ASAM's η (default 0.01)."})
    sam_policy: str | None = field(default=None, metadata={
        "help": "When to pay the second pass: always, ae, looksam, ae_looksam (default always)."})
    sam_ae_delta: float | None = field(default=None, metadata={"help": "AE-SAM's EMA factor δ (default 0.9)."})
    sam_ae_lambdas: list[float] | None = field(default=None, metadata={
        "help": "AE-SAM's (λ1, λ2) threshold schedule (default -1 1)."})
    sam_looksam_k: int | None = field(default=None, metadata={
        "help": "LookSAM: a SAM step every k optimizer steps (default 5)."})
    sam_looksam_alpha: float | None = field(default=None, metadata={"help": "LookSAM's reuse weight α (default 0.7)."})
    sam_sync_perturbation: bool | None = field(default=None, metadata={
        "help": "Average pass-1 gradients across processes (N processes = one with N× the batch)."})
    sam_exact_accumulation: bool | None = field(default=None, metadata={
        "help": "One perturbation per optimizer step from the whole accumulated batch (batch b × accumulation k "
                "then equals batch k·b), instead of one per micro-batch. Runs the passes at the window's last "
                "micro-batch; the earlier ones are held until then."})

    def sam_settings(self) -> dict[str, Any]:
        """The resolved SAM settings (``rho == 0`` means off); raises ``ValueError`` for bad values."""
        return resolve_sam_settings(self)

    def __post_init__(self) -> None:
        super().__post_init__()  # type: ignore[misc]
        self.sam_settings()  # validate at construction


@dataclass
class SAMTrainingArguments(SAMArgumentsMixin, TrainingArguments):
    """``TrainingArguments`` plus the ``sam_*`` knobs."""


@dataclass
class SAMSeq2SeqTrainingArguments(SAMArgumentsMixin, Seq2SeqTrainingArguments):
    """``Seq2SeqTrainingArguments`` plus the ``sam_*`` knobs."""


def _refuse_unsupported(args: TrainingArguments, *, fsdp: bool = False, deepspeed: bool = False) -> None:
    """Fail at start, saying what to use instead, for set-ups where the two-pass step would be wrong."""
    if deepspeed or args.deepspeed:
        raise ValueError(
            "hf-adasam's SAM step does not support DeepSpeed (its backward steps the engine at the end of each "
            "accumulation window, so there is no room for a second pass). Use DDP (torchrun/accelerate launch "
            "without a DeepSpeed config) or a single device."
        )
    if fsdp or args.fsdp or (args.fsdp_config or {}).get("fsdp_version"):
        raise ValueError(
            "hf-adasam's SAM step does not support FSDP (under no_sync FSDP leaves p.grad empty or unsharded, so "
            "the perturbation would be wrong or silently absent). Use DDP or a single device."
        )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and args.world_size == 1:
        raise ValueError(
            f"WORLD_SIZE={world} but TrainingArguments sees one process: on CPU, torchrun needs --use_cpu "
            "(TrainingArguments(use_cpu=True)), or every rank trains the whole job alone."
        )


class SAMTrainerMixin:
    """Mix into any ``Trainer`` subclass to make its ``training_step`` sharpness-aware."""

    def __init__(self, model: Any = None, args: TrainingArguments | None = None, *rest: Any, **kwargs: Any) -> None:
        if args is not None and resolve_sam_settings(args)["rho"] > 0:
            _refuse_unsupported(args)  # before Trainer sets up a distributed engine we would refuse anyway
        super().__init__(model, args, *rest, **kwargs)
        self.sam_settings = resolve_sam_settings(self.args)
        self.sam: SAMStep | None = None
        if self.sam_settings["rho"] > 0:
            _refuse_unsupported(self.args, fsdp=getattr(self, "is_fsdp_enabled", False),
                                deepspeed=getattr(self, "is_deepspeed_enabled", False))

    # -- set-up ---------------------------------------------------------------------------------
    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        opt = super().create_optimizer(model)
        if self.sam_settings["rho"] > 0:
            opt.hf_adasam_sam_driver = True  # tells a SAM-requiring optimizer its second pass is run
        return opt

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None) -> Any:
        # Trainer calls this once the optimizer is final and the number of steps known (AE-SAM's T)
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        self._build_sam(num_training_steps)
        return scheduler

    def _build_sam(self, num_training_steps: int) -> None:
        s = self.sam_settings
        if s["rho"] <= 0:
            self.sam = None
            return
        if self.sam is None:
            self.sam = SAMStep.build(total_steps=num_training_steps, **s)
        model = self.model
        low = {p.dtype for p in model.parameters() if p.requires_grad} & {torch.bfloat16, torch.float16}
        if low:
            warnings.warn(
                f"SAM with {sorted(map(str, low))} trainable weights: the perturbation ρ·g/‖g‖ is mostly rounded away "
                "in low-precision weights and w is restored exactly, so SAM degrades towards the plain step. Load the "
                "model in float32 and use --bf16/--fp16 (autocast) instead.",
                stacklevel=2,
            )
        self._sam_params = [p for p in model.parameters() if p.requires_grad]
        self._held_batches: list[dict[str, Any]] = []

    # -- the step -------------------------------------------------------------------------------
    def training_step(self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None):
        if self.sam is None:
            return super().training_step(model, inputs, num_items_in_batch)

        def backward(batch: dict[str, Any]) -> Callable[[], torch.Tensor]:
            # a fresh dict per pass: compute_loss pops "labels" under label smoothing
            return lambda: super(SAMTrainerMixin, self).training_step(model, dict(batch), num_items_in_batch)

        if self.sam.exact_accumulation:
            self._held_batches.append(inputs)
            if not self.accelerator.sync_gradients:  # not the window's last micro-batch: wait for the rest
                return torch.zeros((), device=self.args.device)
            parts, self._held_batches = [backward(b) for b in self._held_batches], []
        else:
            parts = [backward(inputs)]
        scaler = getattr(self.accelerator, "scaler", None)
        ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
        no_sync = model.no_sync if ddp else contextlib.nullcontext
        loss = self.sam.micro_step(
            self._sam_params,
            parts,
            t=self.state.global_step,
            grad_scale=float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0,
            no_sync=no_sync,
        )
        if self.accelerator.sync_gradients:
            allreduce_grads(self._sam_params)
        return loss

    # -- logs and checkpoints -------------------------------------------------------------------
    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self.sam is not None and "loss" in logs:
            logs = {**logs, **self.sam.stats.pop_logs()}
        super().log(logs, *args, **kwargs)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.sam is not None:
            path = os.path.join(output_dir, SAM_STATE_NAME.format(rank=self.args.process_index))
            torch.save(self.sam.state_dict(), path)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None or self.sam is None:
            return
        path = os.path.join(checkpoint, SAM_STATE_NAME.format(rank=self.args.process_index))
        if os.path.isfile(path):
            self.sam.load_state_dict(torch.load(path, weights_only=False))
        else:
            logger.warning("No %s in %s: the SAM policy restarts from its initial state",
                           os.path.basename(path), checkpoint)


class SAMTrainer(SAMTrainerMixin, Trainer):
    """``transformers.Trainer`` with the sharpness-aware step (see :class:`SAMTrainerMixin`)."""


class SAMSeq2SeqTrainer(SAMTrainerMixin, Seq2SeqTrainer):
    """``transformers.Seq2SeqTrainer`` with the sharpness-aware step."""

