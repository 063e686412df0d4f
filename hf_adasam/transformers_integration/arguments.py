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

from ..optim_args import format_value, split_pairs
from ..registry import OPTIMIZERS, parse_optim_args
from ..sharpness.config import SAMConfig

__all__ = ["SAMArgumentError", "SAMArgumentsMixin", "SAMSeq2SeqTrainingArguments", "SAMTrainingArguments",
           "optim_name", "refuse_lone_rank", "resolve_sam_config", "without_sam_keys"]

_PYTHON_TYPE = {bool: bool, int: int, float: float, str: str}
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


def _field_type(like: Any) -> Any:
    if isinstance(like, tuple):
        return list[float] | None
    return _PYTHON_TYPE[type(like)] | None


def _sam_fields() -> list[tuple[str, Any, dataclasses.Field]]:
    out = []
    for f in SAMConfig.knobs():
        help_text = (f"{f.metadata['help']} Allowed: {f.metadata['allowed']}. Default: "
                     f"{SAMConfig.default_text(f.name)}. Also optim_args key {f.name}.{_NO_ARGPARSE_DEFAULT}")
        metadata: dict[str, Any] = {"help": help_text}
        if isinstance(f.metadata["like"], bool):  # HfArgumentParser: --sam_adaptive alone means true
            metadata.update(nargs="?", const=True)
        out.append((f"sam_{f.name}", _field_type(f.metadata["like"]), dataclasses.field(default=None,
                                                                                        metadata=metadata)))
    return out


def optim_args_help() -> str:
    """``--optim_args``' help: the SAM keys with their defaults, and where the optimizers' keys are listed."""
    sam = ", ".join(f"{f.name} (default {SAMConfig.default_text(f.name)})" for f in SAMConfig.knobs())
    return ("Comma-separated key=value pairs (tuples as a:b, booleans true/false). hf-adasam's SAM keys: "
            f"{sam}. Optimizer keys: the constructor knobs of the optim name (python -m hf_adasam --help lists "
            f"them for {', '.join(OPTIMIZERS)}); Transformers' own optimizers take their usual keys.")


# the generated sam_* fields, as a dataclass the mixin extends
_SAMFields = dataclasses.make_dataclass("_SAMFields", _sam_fields())
_SAMFields.__doc__ = "The sam_* fields, generated from SAMConfig (None: the default, or optim_args' value)."
_SAMFields.__module__ = __name__


@dataclasses.dataclass
class SAMArgumentsMixin(_SAMFields):
    """The ``sam_*`` knobs (``None``: the default, or ``optim_args``' value), checked and resolved at construction."""

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
    rest = {k: v for k, v in split_pairs(optim_args).items() if k not in SAMConfig.__dataclass_fields__}
    return ",".join(f"{k}={format_value(v)}" for k, v in rest.items()) or None
