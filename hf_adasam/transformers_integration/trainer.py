"""``SAMTrainer``: the sharpness-aware two-pass step inside ``Trainer.training_step``.

Everything else stays the Trainer's: the loop, gradient accumulation and its loss scaling,
clipping, the optimizer and scheduler steps, mixed precision, logging, checkpoints. Each
micro-batch runs ``Trainer.training_step`` once (plain) or twice (SAM) through
:class:`hf_adasam.sharpness.step.SAMStep`, so pass 2's gradients are scaled and accumulated exactly as
plain gradients are.

Public ``Trainer`` methods are overridden (``get_optimizer_cls_and_kwargs``, ``create_optimizer``,
``create_scheduler``, ``train``, ``training_step``, ``log``, ``create_model_card``), and one private one through
:class:`._internals.PassTwoInputs` (pass 2 reuses pass 1's prepared batch); the policy's state travels with each
checkpoint through a ``TrainerCallback``.

The mixin composes with any ``Trainer`` subclass whatever its signature (TRL's ``SFTTrainer``, ``DPOTrainer(model,
ref_model, args, ...)``, ``GRPOTrainer(model, reward_funcs, args, ...)``, ``RewardTrainer``): its constructor
forwards every argument untouched and finds ``args`` and ``optimizers`` by binding them to the next class's
signature. What the second pass does to the trainer's own bookkeeping (TRL's ``_metrics``, ``_total_train_tokens``,
``GRPOTrainer._step``: every plain-data attribute) is rolled back after it, so logs report pass 1 only.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import functools
import inspect
import os
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import Seq2SeqTrainer, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import get_last_checkpoint

from .._logging import logger  # shows the start-up line under Transformers' default verbosity
from ..registry import OPTIMIZERS, optimizer_kwargs
from ..sharpness.config import SAMConfig
from ..sharpness.step import SAMStep, allreduce_grads
from . import _internals
from .arguments import (
    SAMSeq2SeqTrainingArguments,
    SAMTrainingArguments,
    optim_name,
    refuse_lone_rank,
    resolve_sam_config,
    without_sam_keys,
)
from .registration import install_trainer_guard, needs_sam_step, register, rho_given, sam_driver, unwrap

__all__ = ["SAMSeq2SeqTrainer", "SAMSeq2SeqTrainingArguments", "SAMTrainer", "SAMTrainerMixin", "SAMTrainingArguments"]

SAM_STATE_NAME = "sam_state_rank{rank}.pt"

_internals.check_pass_two_inputs()
install_trainer_guard()  # every Trainer built from now on refuses a SAM request it would not run


def _fsdp_version(args: TrainingArguments, plugin: Any = None) -> int | None:
    """The FSDP version this run uses (None: no FSDP): Accelerate's plugin once Trainer built it, else the
    arguments (``fsdp_config["version"]``, which Transformers defaults to 2)."""
    if plugin is not None:
        return int(getattr(plugin, "fsdp_version", 1))
    if not args.fsdp:
        return None
    config = args.fsdp_config or {}
    return int(config.get("version", config.get("fsdp_version", 2)))


def _refuse_unsupported(args: TrainingArguments, *, fsdp_plugin: Any = None, deepspeed: bool = False) -> None:
    """Fail at start, saying what to use instead, for set-ups where the two-pass step would be wrong."""
    if deepspeed or args.deepspeed:
        raise ValueError(
            "hf-adasam's SAM step does not support DeepSpeed (its backward steps the engine at the end of each "
            "accumulation window, so there is no room for a second pass). Use FSDP2 (--fsdp full_shard with "
            "fsdp_config version 2, Transformers' default) to shard, DDP (torchrun/accelerate launch without a "
            "DeepSpeed config) or a single device."
        )
    version = _fsdp_version(args, fsdp_plugin)
    if (args.fsdp_config or {}).get("xla"):
        raise ValueError("hf-adasam's SAM step does not support FSDP on XLA. Use FSDP2 (fsdp_config version 2) or DDP "
                         "on GPUs/CPUs, or a single device.")
    if version is not None and version != 2:
        raise ValueError(
            f"hf-adasam's SAM step does not support FSDP version {version} (FSDP1's flat parameters hold no per-"
            "parameter gradient between passes, so the perturbation would be wrong or silently absent). Use FSDP2: "
            "fsdp_config={'version': 2} (Transformers' default; Accelerate: fsdp_version: 2), or DDP, or one device."
        )
    refuse_lone_rank(args)  # SAMTrainingArguments refused it already while parsing; plain TrainingArguments here


@contextlib.contextmanager
def _fsdp2_gradient_sync(model: Any) -> Any:
    """Both SAM passes reduce-scatter under FSDP2, also inside Accelerate's ``no_sync`` (which turns FSDP2's
    gradient sync off for the micro-batches before the window's last): the perturbation of every micro-batch
    needs its averaged gradient, and FSDP2 keeps no per-parameter gradient of an unsynced pass to perturb with."""
    model.set_requires_gradient_sync(True)
    yield


def _is_fsdp2(model: Any) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch < 2.6: no public FSDP2
        return False
    return isinstance(model, FSDPModule)


class _SAMStateCallback(TrainerCallback):
    """Writes the policy's state (EMAs, g_v, counters) into each checkpoint, one file per rank."""

    def __init__(self, trainer: SAMTrainerMixin) -> None:
        self.trainer = trainer

    def on_save(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        sam = self.trainer.sam
        if sam is None:
            return
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if os.path.isdir(folder):
            torch.save(sam.state_dict(), os.path.join(folder, SAM_STATE_NAME.format(rank=args.process_index)))


class TrainingClock(TrainerCallback, ExportableState):
    """The training time of a run, summed over resumes: each checkpoint's ``trainer_state.json`` records the time
    trained so far (Transformers saves an ``ExportableState`` callback's ``state()`` there), and a run resumed from
    it adds its own time to that. The model card reports :meth:`total_seconds`."""

    def __init__(self) -> None:
        self.seconds_before = 0.0  # trained before this run (restored from the checkpoint resumed from)
        self.runs = 1  # this run and those it continues
        self.started: float | None = None  # this run's start (time.time()); None: not training now
        self.seconds_this_run = 0.0  # this run's time once it has ended

    def state(self) -> dict[str, Any]:
        return {"args": {}, "attributes": {"seconds_before": self.total_seconds(), "runs": self.runs}}

    def total_seconds(self) -> float:
        now = time.time() - self.started if self.started is not None else self.seconds_this_run
        return self.seconds_before + now

    def on_train_begin(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        saved = (state.stateful_callbacks or {}).get(type(self).__name__) if state.global_step > 0 else None
        attributes = (saved[-1] if isinstance(saved, list) else saved or {}).get("attributes", {})
        self.seconds_before = float(attributes.get("seconds_before", 0.0))  # 0 for a run that is not resumed
        self.runs = int(attributes.get("runs", 0)) + 1
        self.started, self.seconds_this_run = time.time(), 0.0

    def on_train_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        if self.started is not None:
            self.seconds_this_run, self.started = time.time() - self.started, None


_LEAVES = (int, float, complex, bool, str, bytes, type(None))


def _plain(value: Any) -> bool:
    """Plain data: scalars, strings, grad-free 0-d tensors, and lists/tuples/sets/deques/dicts of plain data."""
    if isinstance(value, _LEAVES):
        return True
    if isinstance(value, torch.Tensor):
        return value.dim() == 0 and not value.requires_grad
    if isinstance(value, dict):
        return all(_plain(k) and _plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset, collections.deque)):
        return all(_plain(v) for v in value)
    return False


@contextlib.contextmanager
def _bookkeeping_rolled_back(trainer: Any) -> Iterator[None]:
    """Whatever the code inside does to the trainer's plain-data attributes (metric lists, token and step counters)
    is undone after it: SAM's second pass then leaves the logs as pass 1 left them. Containers are restored in place,
    so a reference another object holds stays valid."""
    saved = {name: (value, copy.deepcopy(value)) for name, value in vars(trainer).items()
             if not name.startswith("_sam") and _plain(value)}
    try:
        yield
    finally:
        now = vars(trainer)
        for name, (obj, kept) in saved.items():
            if now.get(name) is obj and isinstance(obj, dict):
                obj.clear()
                obj.update(kept)
            elif now.get(name) is obj and isinstance(obj, (list, collections.deque)):
                obj.clear()
                obj.extend(kept)
            elif now.get(name) is obj and isinstance(obj, set):
                obj.clear()
                obj.update(kept)
            elif now.get(name) is obj and isinstance(obj, torch.Tensor):
                obj.copy_(kept)
            else:
                now[name] = kept


def _bind(init: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The constructor's arguments by parameter name, as the next class in the MRO will read them ({} if unknown)."""
    try:
        sig = inspect.signature(init)
        bound = sig.bind_partial(*args, **kwargs)
    except (TypeError, ValueError):  # the next class's own error follows when it is called
        return {}
    out: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = sig.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        elif kind is not inspect.Parameter.VAR_POSITIONAL:
            out[name] = value
    return out


def check_optim_args(args: TrainingArguments) -> None:
    """Every ``optim_args`` key is SAM's or the optimizer's (``ValueError`` otherwise), for hf-adasam's names and for
    Transformers' own (whose handler must read the key). Run where the trainer is built; ``create_optimizer``
    checks again. No model is passed: a handler that needs one (GaLore's layer-wise variant hooks the model's
    parameters) fails here and is checked when ``create_optimizer`` builds it."""
    name = optim_name(args)
    if name in OPTIMIZERS:
        optimizer_kwargs(name, args)
        return
    try:
        SAMTrainerMixin.get_optimizer_cls_and_kwargs(args, None)
    except ValueError as err:
        if str(err).startswith("optim_args: "):
            raise
    except Exception:  # an optimizer that needs the prepared model or a package: create_optimizer builds it (and
        pass  # checks the keys again) before the first forward, and raises its own error there


class SAMTrainerMixin(_internals.PassTwoInputs):
    """Mix into any ``Trainer`` subclass, first in the bases, to make its ``training_step`` sharpness-aware:
    ``class MySFT(SAMTrainerMixin, SFTTrainer)``, built exactly as the base class is (keywords or positions)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        mro = cls.__mro__
        if Trainer in mro and mro.index(Trainer) < mro.index(SAMTrainerMixin):
            base = next(b for b in mro[1:] if issubclass(b, Trainer))
            raise TypeError(f"{cls.__name__}: SAMTrainerMixin must come first in the bases, before {base.__name__} "
                            f"(class {cls.__name__}(SAMTrainerMixin, {base.__name__})); after it, "
                            f"{base.__name__}.training_step would run without the SAM step")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        register()  # the optim names (TrainingArguments built before this call already needed them)
        given = _bind(super().__init__, args, kwargs)
        training_args = given.get("args")
        optimizer = (given.get("optimizers") or (None, None))[0]
        config = None
        if isinstance(training_args, TrainingArguments):  # before the base class prepares data or builds models
            config = getattr(training_args, "sam_config", None) or resolve_sam_config(training_args)
            self._sam_preflight(training_args, config, optimizer)
        with sam_driver():
            super().__init__(*args, **kwargs)
        # resolved once per run: SAMTrainingArguments did it when built; plain TrainingArguments here
        self.sam_config: SAMConfig = config or resolve_sam_config(self.args)
        if config is None:  # the base class built its own arguments (TRL does for args=None)
            self._sam_preflight(self.args, self.sam_config, self.optimizer)
        self.sam: SAMStep | None = None
        self._sam_resume: str | None = None
        self.card_info: Any = None  # a card.CardInfo: what a recipe knows of the task, for create_model_card
        if self.sam_config.on:
            plugin = getattr(self.accelerator.state, "fsdp_plugin", None) if getattr(self, "is_fsdp_enabled", False) \
                else None
            _refuse_unsupported(self.args, fsdp_plugin=plugin, deepspeed=getattr(self, "is_deepspeed_enabled", False))
            if self.args.fsdp and plugin is None:  # e.g. on CPU, where Accelerate runs a fsdp= job as DDP
                logger.warning("hf-adasam: FSDP was asked (fsdp=%r) but Accelerate runs this job as %s, not FSDP: SAM "
                               "runs as under DDP (parameters not sharded)", self.args.fsdp,
                               self.accelerator.distributed_type)
        self.add_callback(_SAMStateCallback(self))
        self.add_callback(TrainingClock())

    def _sam_preflight(self, args: TrainingArguments, config: SAMConfig, optimizer: Any) -> None:
        """The checks that need only the arguments: refused set-ups, unknown optim_args keys, an optimizer instance
        that needs SAM under ρ = 0 (marked as driven when SAM is on)."""
        if config.on:
            _refuse_unsupported(args)
        check_optim_args(args)
        if optimizer is not None:
            if config.on:
                unwrap(optimizer).hf_adasam_sam_driver = True
            elif needs_sam_step(optimizer) and not rho_given(args):
                raise RuntimeError(
                    f"The optimizer instance {type(unwrap(optimizer)).__name__} needs SAM's second pass, but SAM is "
                    f"off in {type(self).__name__}: rho resolves to 0 (neither sam_rho nor a rho key in optim_args). "
                    "Set rho > 0 (optim_args='rho=0.05' or sam_rho=0.05; SAM's default is 0.05), or rho=0 to run the "
                    "base update alone.")

    # -- set-up ---------------------------------------------------------------------------------
    @staticmethod
    def get_optimizer_cls_and_kwargs(args: TrainingArguments, model: Any = None) -> tuple[Any, Any]:
        """hf-adasam's names from its registry; Transformers' own names from ``Trainer``, without the SAM keys."""
        name = optim_name(args)
        if name in OPTIMIZERS:
            return OPTIMIZERS[name].cls, optimizer_kwargs(name, args)
        plain = copy.copy(args)
        plain.optim_args = without_sam_keys(args.optim_args)
        with sam_driver():  # the handler checks that it reads every key left
            return Trainer.get_optimizer_cls_and_kwargs(plain, model)

    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        with sam_driver():
            opt = super().create_optimizer(*(() if model is None else (model,)))  # 5.2's takes no model
        if self.sam_config.on:
            unwrap(opt).hf_adasam_sam_driver = True  # tells the guard a SAM-requiring optimizer's second pass is run
        return opt

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None) -> Any:
        # Trainer calls this once the optimizer is final and the number of steps known (AE-SAM's T)
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        self._build_sam(num_training_steps)
        return scheduler

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.train``, after one log line with the resolved SAM settings; a resumed run restores the policy."""
        if self.args.should_log:  # the main process (every node's with log_on_each_node)
            logger.info(self.sam_config.describe())
        if resume_from_checkpoint is True:
            self._sam_resume = get_last_checkpoint(self.args.output_dir)
        elif isinstance(resume_from_checkpoint, str):
            self._sam_resume = resume_from_checkpoint
        try:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            self._sam_resume = None

    def _build_sam(self, num_training_steps: int) -> None:
        if not self.sam_config.on:
            self.sam = None
            return
        if self.sam is None:
            self.sam = SAMStep.from_config(self.sam_config, total_steps=num_training_steps)
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
        self.sam.perturbation.set_names(model.named_parameters())
        self.sam.perturbation.scaled(self._sam_params)  # asam_scope="weights" without names fails here, not later
        self._held_batches: list[dict[str, Any]] = []
        self._sam_params_checked = False
        if self._sam_resume:
            path = os.path.join(self._sam_resume, SAM_STATE_NAME.format(rank=self.args.process_index))
            if os.path.isfile(path):
                self.sam.load_state_dict(torch.load(path, weights_only=False))
                if self.args.should_log:
                    logger.info("hf-adasam: SAM state restored from %s (%d second passes in %d micro-batches so far)",
                                path, self.sam.stats.total_second_passes, self.sam.stats.total_micro_batches)
            else:
                logger.warning("No %s in %s: the SAM policy restarts from its initial state",
                               os.path.basename(path), self._sam_resume)

    # -- the step -------------------------------------------------------------------------------
    def training_step(self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None):
        if self.sam is None:
            return super().training_step(model, inputs, num_items_in_batch)
        if not self._sam_params_checked:  # the parameters the step perturbs must be the ones being trained
            self._sam_params_checked = True
            current = [p for p in model.parameters() if p.requires_grad]
            if {id(p) for p in current} != {id(p) for p in self._sam_params}:  # e.g. a wrapper replaced them
                self._sam_params = current
                self.sam.perturbation.set_names(model.named_parameters())
                self.sam.perturbation.scaled(self._sam_params)

        def backward(batch: dict[str, Any]) -> Callable[[], torch.Tensor]:
            """Pass 1 at the first call; pass 2 at the second, on pass 1's prepared inputs, its bookkeeping undone."""
            prepared: dict[str, Any] = {}

            def run() -> torch.Tensor:
                # a fresh dict per pass: compute_loss pops "labels" under label smoothing
                fresh = dict(batch) if isinstance(batch, dict) else batch  # TRL's GRPO: a list of examples
                step = functools.partial(super(SAMTrainerMixin, self).training_step, model, fresh, num_items_in_batch)
                if not run.calls:
                    run.calls = 1
                    self._sam_capture = prepared
                    try:
                        return step()
                    finally:
                        self._sam_capture = None
                _internals.PassTwoInputs.check_captured(prepared)
                self._sam_replay = prepared
                try:
                    with _bookkeeping_rolled_back(self):
                        return step()
                finally:
                    self._sam_replay = None

            run.calls = 0
            return run

        if self.sam.exact_accumulation:
            self._held_batches.append(inputs)
            if not self.accelerator.sync_gradients:  # not the window's last micro-batch: wait for the rest
                return torch.zeros((), device=self.args.device)
            parts, self._held_batches = [backward(b) for b in self._held_batches], []
        else:
            parts = [backward(inputs)]
        scaler = getattr(self.accelerator, "scaler", None)
        ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
        if _is_fsdp2(model):  # sharded: every pass reduce-scatters (the perturbation from the averaged gradient)
            no_sync = functools.partial(_fsdp2_gradient_sync, model)
        else:
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

    @property
    def training_clock(self) -> TrainingClock | None:
        """The callback that times training across resumes (Transformers may replace it when it restores callbacks)."""
        return next((cb for cb in self.callback_handler.callbacks if isinstance(cb, TrainingClock)), None)

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """Transformers' (or TRL's) card plus the optimizer/SAM section and metadata (what ``push_to_hub`` uploads);
        with ``self.card_info`` set (the recipes), the whole card from hf-adasam's template. The tags,
        ``library_name`` and other metadata of the card that was there (e.g. PEFT's, from ``save_model``) are kept."""
        path = os.path.join(self.args.output_dir, "README.md")
        prior = _load_card(path) if self.is_world_process_zero() else None
        if self.card_info is None:
            super().create_model_card(*args, **kwargs)
        if self.is_world_process_zero():
            from .card import write_card

            write_card(path, self, self.card_info, prior=prior, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """``Trainer.save_model``; when the user saves (not a checkpoint), the folder also gets the model card,
        whatever ``save_strategy`` says (checkpoints and ``push_to_hub`` write their own)."""
        super().save_model(output_dir, _internal_call)
        if _internal_call or not self.is_world_process_zero():
            return
        folder = output_dir or self.args.output_dir
        if os.path.abspath(folder) == os.path.abspath(self.args.output_dir):
            self.create_model_card(model_name=Path(folder).name)
        else:  # Transformers' card goes to args.output_dir only: ours alone, around what save_pretrained wrote
            from .card import write_card

            path = os.path.join(folder, "README.md")
            write_card(path, self, self.card_info, prior=_load_card(path))


def _load_card(path: str) -> Any:
    if not os.path.isfile(path):
        return None
    from huggingface_hub import ModelCard

    return ModelCard.load(path)


class _MixinOnce(type):
    """The metaclass of ``SAMTrainer`` and ``SAMSeq2SeqTrainer``: a subclass that names ``SAMTrainerMixin`` in its
    bases again gets the mixin once, at the place it names it.

    Under ``python -m hf_adasam``, ``transformers.Trainer`` is ``SAMTrainer`` (and TRL's trainers derive from it), so
    a script's ``class X(SAMTrainerMixin, Trainer)`` or ``class X(SAMTrainerMixin, DPOTrainer)`` puts the mixin
    before a base that already has it after itself, and Python finds no method order ("Cannot create a consistent
    method resolution order"). For such a class the order is C3's over the bases with the mixin (and its own bases)
    left out of the other bases' orders: ``X, SAMTrainerMixin, ..., DPOTrainer, ..., SAMTrainer, Trainer, ...``, as
    without the launcher; SAM runs once, from where the script put the mixin (``SAMTrainer`` adds nothing to the
    mixin). Other classes keep Python's order.
    """

    def mro(cls) -> list[type]:
        try:
            return super().mro()
        except TypeError:
            mixins = [b for b in cls.__bases__ if issubclass(b, SAMTrainerMixin) and not issubclass(b, Trainer)]
            if not mixins:
                raise
        named = {c for m in mixins for c in m.__mro__} - {object}
        orders = [list(b.__mro__) if b in mixins else [c for c in b.__mro__ if c not in named] for b in cls.__bases__]
        return [cls, *_c3_merge([*orders, list(cls.__bases__)])]


def _c3_merge(orders: list[list[type]]) -> list[type]:
    out: list[type] = []
    orders = [o for o in orders if o]
    while orders:
        head = next((o[0] for o in orders if not any(o[0] in rest[1:] for rest in orders)), None)
        if head is None:
            raise TypeError(f"no consistent method order for the bases {[o[0].__name__ for o in orders]}")
        out.append(head)
        orders = [r for r in ((o[1:] if o[0] is head else o) for o in orders) if r]
    return out


class SAMTrainer(SAMTrainerMixin, Trainer, metaclass=_MixinOnce):
    """``transformers.Trainer`` with the sharpness-aware step (see :class:`SAMTrainerMixin`)."""


class SAMSeq2SeqTrainer(SAMTrainerMixin, Seq2SeqTrainer, metaclass=_MixinOnce):
    """``transformers.Seq2SeqTrainer`` with the sharpness-aware step."""

