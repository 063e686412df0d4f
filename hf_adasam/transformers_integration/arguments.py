"""``SAMTrainingArguments``: ``TrainingArguments`` plus a ``sam_<knob>`` field per :class:`SAMConfig` knob.

The fields, their help and the ``optim_args`` help are generated from :class:`SAMConfig`; the
arguments are checked and the SAM settings resolved once, when the dataclass is built (so a bad
``--optim_args "rho=abc"`` fails while the command line is parsed, before any data or model loads).
The result is ``args.sam_config``. :func:`resolve_sam_config` does the same for a plain
``TrainingArguments``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers import Seq2SeqTrainingArguments, TrainingArguments

from ..optim_args import format_value, split_pairs
from ..registry import OPTIMIZERS, parse_optim_args
from ..sharpness.config import SAMConfig

__all__ = ["SAMArgumentsMixin", "SAMSeq2SeqTrainingArguments", "SAMTrainingArguments", "optim_name",
           "resolve_sam_config", "without_sam_keys"]

_PYTHON_TYPE = {bool: bool, int: int, float: float, str: str}


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
                     f"{SAMConfig.default_text(f.name)}. Also optim_args key {f.name}.")
        out.append((f"sam_{f.name}", _field_type(f.metadata["like"]), dataclasses.field(default=None,
                                                                                        metadata={"help": help_text})))
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
        if name in OPTIMIZERS:
            parse_optim_args(name, self.optim_args)  # the optimizer's own keys: known, and of the right type
        self.sam_config: SAMConfig = resolve_sam_config(self)

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
