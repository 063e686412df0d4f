"""``SAMTrainingArguments``: ``TrainingArguments`` plus a ``sam_<knob>`` field per :class:`SAMConfig` knob.

The fields, their help and the ``optim_args`` help are generated from :class:`SAMConfig`; the
arguments are checked and the SAM settings resolved once, when the dataclass is built (so a bad
``--optim_args "rho=abc"`` fails while the command line is parsed, before any data or model loads).
The result is ``args.sam_config``. :func:`resolve_sam_config` does the same for a plain
``TrainingArguments``. What fails there is a :class:`SAMArgumentError` (a ``ValueError``) of one line, which
``python -m hf_adasam`` and the recipes print as ``error: ...`` with exit status 2, as argparse does.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from transformers import Seq2SeqTrainingArguments, TrainingArguments

from ..optim_args import format_value
from ..registry import OPTIMIZERS, parse_optim_args
from ..sharpness.config import SAMConfig, split_sam_keys

__all__ = ["SAMArgumentError", "SAMArgumentsMixin", "SAMSeq2SeqTrainingArguments", "SAMTrainingArguments",
           "optim_name", "refuse_lone_rank", "resolve_sam_config", "without_sam_keys"]

# argparse %-formats each help string with the action's fields: "%(default).0s" renders as nothing, and its presence
# stops ArgumentDefaultsHelpFormatter (HfArgumentParser's) from appending "(default: None)" to a sam_* flag, whose
# None means "not given" (optim_args' value or SAMConfig's default applies); the help states the real default
_NO_ARGPARSE_DEFAULT = "%(default).0s"


class SAMArgumentError(ValueError):
    """A bad ``optim_args``/``sam_*`` value, or a set-up refused while the arguments are built: one line, printed
    as ``error: ...`` with exit status 2 by ``python -m hf_adasam`` and the recipes."""


def refuse_lone_rank(args: Any) -> None:
    """Refuse a launch of several processes (``WORLD_SIZE`` > 1) in which ``args`` see one process: on CPU, torchrun
    without ``--use_cpu``, where every rank would train the whole job alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and args.world_size == 1:
        raise SAMArgumentError(
            f"WORLD_SIZE={world} but TrainingArguments sees one process: on CPU, torchrun needs --use_cpu "
            "(TrainingArguments(use_cpu=True)), or every rank trains the whole job alone."
        )


def optim_name(args: Any) -> str:
    return str(getattr(args.optim, "value", args.optim))


def _sam_asked(name: str) -> bool:
    entry = OPTIMIZERS.get(name)
    return bool(entry is not None and entry.sam)


def resolve_sam_config(args: Any, *, warn: bool = True) -> SAMConfig:
    """The run's SAM settings from ``args``: ``sam_*`` fields (``SAMTrainingArguments``) over ``optim_args`` keys;
    an unset ρ is the method's default for a name that asks for SAM (``adasam``), else 0 (off)."""
    name = optim_name(args)
    asked = _sam_asked(name)
    given = SAMConfig.from_optim_args(getattr(args, "optim_args", None), optim=name, sam_asked=asked)
    for key in SAMConfig.names():
        value = getattr(args, f"sam_{key}", None)
        if value is not None:
            given[key] = value
    return SAMConfig.resolve(given, sam_asked=asked, optim=name, warn=warn)


def _sam_help(help: str, *, flag: bool = False) -> dict[str, Any]:
    """A ``sam_*`` field's metadata for ``HfArgumentParser``: its help; ``flag``: a boolean, which ``--sam_<knob>``
    alone sets to true."""
    metadata: dict[str, Any] = {"help": help + _NO_ARGPARSE_DEFAULT}
    if flag:
        metadata.update(nargs="?", const=True)
    return metadata


def optim_args_help() -> str:
    """``--optim_args``' help: the SAM keys with their defaults, and where the optimizers' keys are listed."""
    sam = ", ".join(f"{f.name} (default {SAMConfig.default_text(f.name)})" for f in SAMConfig.knobs())
    return ("Comma-separated key=value pairs (tuples as a:b, booleans true/false). hf-adasam's SAM keys: "
            f"{sam}. Optimizer keys: the constructor knobs of the optim name (python -m hf_adasam --help lists "
            f"them for {', '.join(OPTIMIZERS)}); Transformers' own optimizers take their usual keys.")


@dataclasses.dataclass
class SAMArgumentsMixin:
    """The ``sam_*`` knobs (``None``: the default, or ``optim_args``' value), checked and resolved at construction.

    One field per :class:`SAMConfig` knob, with its type and help, spelled out for IDEs and type checkers
    (``SAMConfig`` holds the facts; a test keeps the two equal). ``None``, every field's default, means not given.
    """

    # generated from SAMConfig (python -m tests._sam_declarations; tests/test_sam_config.py checks it): begin
    sam_rho: float | None = dataclasses.field(default=None, metadata=_sam_help(
        "SAM radius ρ; 0 turns SAM off. Allowed: a number >= 0. Default: 0.05 (ASAM 0.5) where SAM is asked for "
        "(SAM(...), optim=adasam), else 0 (SAM off). Also optim_args key rho."))
    sam_adaptive: bool | None = dataclasses.field(default=None, metadata=_sam_help(
        "ASAM: scale the perturbation element-wise by T = |w| + η. Allowed: true or false. Default: "
        "false. Also optim_args key adaptive.", flag=True))
    sam_eta: float | None = dataclasses.field(default=None, metadata=_sam_help(
        "ASAM's η in T = |w| + η. Allowed: a number >= 0. Default: 0.01. Also optim_args key eta."))
    sam_asam_scope: str | None = dataclasses.field(default=None, metadata=_sam_help(
        "ASAM: which tensors get T = |w| + η. 'all': every trainable tensor (the paper); 'weights': only tensors "
        "whose parameter name contains 'weight', the others T = 1 (the official ASAM code). Allowed: 'all' or "
        "'weights'. Default: all. Also optim_args key asam_scope."))
    sam_policy: str | None = dataclasses.field(default=None, metadata=_sam_help(
        "When a micro-batch pays the second pass: always (SAM), ae (AE-SAM), looksam (every k-th step, reusing the "
        "stored direction in between), ae_looksam. Allowed: always, ae, looksam, ae_looksam. Default: always. Also "
        "optim_args key policy."))
    sam_ae_delta: float | None = dataclasses.field(default=None, metadata=_sam_help(
        "AE-SAM: EMA factor δ of ‖g‖²'s mean and variance. Allowed: a number in [0, 1). Default: 0.9. Also "
        "optim_args key ae_delta."))
    sam_ae_lambdas: list[float] | None = dataclasses.field(default=None, metadata=_sam_help(
        "AE-SAM: threshold schedule (λ1, λ2), c_t = λ2 + (λ1 − λ2)·t/T. Allowed: two numbers. Default: -1.0:1.0. "
        "Also optim_args key ae_lambdas."))
    sam_looksam_k: int | None = dataclasses.field(default=None, metadata=_sam_help(
        "LookSAM: a SAM step every k optimizer steps. Allowed: an integer >= 1. Default: 5. Also optim_args key "
        "looksam_k."))
    sam_looksam_alpha: float | None = dataclasses.field(default=None, metadata=_sam_help(
        "LookSAM: weight α of the reused orthogonal component. Allowed: a number >= 0. Default: 0.7. Also optim_args "
        "key looksam_alpha."))
    sam_sync_perturbation: bool | None = dataclasses.field(default=None, metadata=_sam_help(
        "Data parallel: average pass-1 gradients across processes first (N processes then equal one with "
        "N× the batch); else each replica perturbs with its own sub-batch. Under FSDP2 always in effect "
        "(each pass reduce-scatters the gradients). Allowed: true or false. Default: false. Also "
        "optim_args key sync_perturbation.", flag=True))
    sam_exact_accumulation: bool | None = dataclasses.field(default=None, metadata=_sam_help(
        "Trainer: one perturbation per optimizer step from the whole accumulated batch (batch b × "
        "accumulation k then equals batch k·b) instead of one per micro-batch. Allowed: true or false. "
        "Default: false. Also optim_args key exact_accumulation.", flag=True))
    # generated: end
    optim_args: str | None = dataclasses.field(default=None, metadata={"help": optim_args_help()})

    def __post_init__(self) -> None:
        super().__post_init__()  # type: ignore[misc]
        name = optim_name(self)
        try:
            if name in OPTIMIZERS:
                parse_optim_args(name, self.optim_args)  # the optimizer's own keys: known, and of the right type
            self.sam_config: SAMConfig = resolve_sam_config(self)
        except SAMArgumentError:
            raise
        except ValueError as err:
            raise SAMArgumentError(str(err)) from None
        if self.sam_config.on:
            refuse_lone_rank(self)  # before the script loads data or a model

    def sam_settings(self) -> dict[str, Any]:
        """The resolved SAM settings as a dict (``rho == 0`` means off)."""
        return self.sam_config.as_dict()


@dataclasses.dataclass
class SAMTrainingArguments(SAMArgumentsMixin, TrainingArguments):
    """``TrainingArguments`` plus the ``sam_*`` knobs of :class:`~hf_adasam.sharpness.SAMConfig`."""


@dataclasses.dataclass
class SAMSeq2SeqTrainingArguments(SAMArgumentsMixin, Seq2SeqTrainingArguments):
    """``Seq2SeqTrainingArguments`` plus the ``sam_*`` knobs."""


def without_sam_keys(optim_args: str | None) -> str | None:
    """``optim_args`` without the SAM keys (what Transformers' own optimizer handlers should see)."""
    _, rest = split_sam_keys(optim_args)
    return ",".join(f"{k}={format_value(v)}" for k, v in rest.items()) or None
