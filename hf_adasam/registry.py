"""One table from ``optim`` names to optimizers, and its hook into Transformers.

Every fact about a name lives in its :class:`OptimEntry`: the class, the paper, which
``TrainingArguments`` fields feed which knob, and fixed arguments. Knob defaults are *not* repeated
here: they are read from the class's constructor signature, which follows the spec's tables.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

import torch

from .optim import Adai, AdaSAM, AdaShift, CPropAdam, CPropSGD, GenericAdam, SETAdam

__all__ = ["OPTIMIZERS", "OptimEntry", "create_optimizer", "optimizer_kwargs", "parse_optim_args", "register"]

# Knobs that the Trainer fills itself (param groups carry lr and weight decay) or that select the
# kernel rather than the algorithm: never set through ``optim_args``.
_MANAGED = frozenset({"params", "lr", "weight_decay"})
# torch.optim.RAdam arguments that are not algorithm knobs.
_NOT_KNOBS = frozenset({"foreach", "maximize", "capturable", "differentiable"})


@dataclasses.dataclass(frozen=True)
class OptimEntry:
    name: str
    cls: type[torch.optim.Optimizer]
    paper: str
    # constructor knob -> TrainingArguments field(s) it is read from, where the meaning is the same
    hf_args: Mapping[str, str | tuple[str, ...]] = dataclasses.field(default_factory=dict)
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    sam: bool = False  # the name asks for the SAM perturbation (rho defaults on)

    def knobs(self) -> dict[str, Any]:
        """Settable constructor arguments and their defaults (``inspect.Parameter.empty`` if required)."""
        sig = inspect.signature(self.cls.__init__)
        return {
            n: p.default
            for n, p in sig.parameters.items()
            if n != "self"
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            and n not in _MANAGED | _NOT_KNOBS | set(self.fixed)
        }


_ADAM_ARGS = MappingProxyType({"betas": ("adam_beta1", "adam_beta2"), "eps": "adam_epsilon"})

OPTIMIZERS: dict[str, OptimEntry] = {
    e.name: e
    for e in (
        OptimEntry("adasam", AdaSAM, "Sun et al. 2023, arXiv 2303.00565", _ADAM_ARGS, sam=True),
        OptimEntry("set_adam", SETAdam, "Zhang 2023, arXiv 2302.01029", {"betas": ("adam_beta1", "adam_beta2")}),
        OptimEntry(
            "radam",
            torch.optim.RAdam,
            "Liu et al. ICLR 2020, arXiv 1908.03265",
            _ADAM_ARGS,
            fixed={"decoupled_weight_decay": True},
        ),
        OptimEntry("adai", Adai, "Xie et al. ICML 2022, arXiv 2006.15815"),
        OptimEntry(
            "adaiw", Adai, "Xie et al. ICML 2022, arXiv 2006.15815", fixed={"decoupled": True}
        ),
        OptimEntry("adashift", AdaShift, "Zhou et al. ICLR 2019, arXiv 1810.00143", _ADAM_ARGS),
        OptimEntry("cprop_adam", CPropAdam, "Preechakul & Kijsirikul 2019, arXiv 1912.06334", _ADAM_ARGS),
        OptimEntry("cprop_sgd", CPropSGD, "Preechakul & Kijsirikul 2019, arXiv 1912.06334"),
        OptimEntry("generic_adam", GenericAdam, "Zou et al. CVPR 2019, arXiv 1811.09358"),
    )
}


# optim_args keys that configure the SAM step rather than the optimizer, with their types (the
# values' defaults live in hf_adasam.sharpness); SAMTrainingArguments has each as ``sam_<key>``.
SAM_OPTIM_ARGS: dict[str, Any] = {
    "rho": 0.0,
    "adaptive": False,
    "eta": 0.0,
    "policy": "",
    "ae_delta": 0.0,
    "ae_lambdas": (0.0, 0.0),
    "looksam_k": 0,
    "looksam_alpha": 0.0,
    "sync_perturbation": False,
    "exact_accumulation": False,
}


def _entry(name: str) -> OptimEntry:
    try:
        return OPTIMIZERS[str(name)]
    except KeyError:
        raise ValueError(f"Unknown optimizer {name!r}; hf-adasam knows: {', '.join(OPTIMIZERS)}") from None


# ----------------------------------------------------------------------------------------------
# optim_args: "key=value,..." typed by the knob's default
# ----------------------------------------------------------------------------------------------
def _convert(key: str, raw: str, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            low = raw.strip().lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return low in ("true", "1", "yes")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, tuple):  # betas=0.9:0.999 (',' already separates optim_args)
            parts = tuple(float(x) for x in raw.split(":"))
            if len(parts) != len(default):
                raise ValueError
            return parts
        if isinstance(default, str):
            return raw
        return float(raw)
    except ValueError:
        shown = ":".join(str(x) for x in default) if isinstance(default, tuple) else default
        raise ValueError(
            f"optim_args: cannot read {key}={raw!r}; expected a value like the default {key}={shown}"
        ) from None


def _split_pairs(optim_args: str | Mapping[str, str] | None) -> dict[str, str]:
    if not optim_args:
        return {}
    if not isinstance(optim_args, str):
        return dict(optim_args)
    pairs: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in optim_args.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"optim_args: {item!r} is not of the form key=value")
        pairs[key.strip()] = value.strip()
    return pairs


def parse_sam_args(optim_args: str | Mapping[str, str] | None) -> dict[str, Any]:
    """The SAM keys of ``optim_args`` (see :data:`SAM_OPTIM_ARGS`), typed."""
    return {k: _convert(k, v, SAM_OPTIM_ARGS[k]) for k, v in _split_pairs(optim_args).items() if k in SAM_OPTIM_ARGS}


def parse_optim_args(name: str, optim_args: str | Mapping[str, str] | None) -> dict[str, Any]:
    """Typed optimizer kwargs from ``optim_args`` (a ``"k=v,k=v"`` string or a parsed mapping).

    SAM keys (:data:`SAM_OPTIM_ARGS`) are skipped here: they configure the SAM step.
    """
    knobs = _entry(name).knobs()
    out: dict[str, Any] = {}
    for key, raw in _split_pairs(optim_args).items():
        if key in SAM_OPTIM_ARGS:
            continue
        if key not in knobs:
            valid = ", ".join(sorted(knobs))
            raise ValueError(
                f"optim_args: unknown key {key!r} for optim={name!r}; valid keys: {valid} "
                f"(and the SAM keys {', '.join(SAM_OPTIM_ARGS)})"
            )
        default = knobs[key]
        if default is inspect.Parameter.empty:
            default = 0.0  # a required knob is a float
        elif default is None:
            default = ""  # a None default is a string choice (impl)
        out[key] = _convert(key, raw, default)
    return out


def _changed_fields(args: Any, fields: str | tuple[str, ...]) -> Any:
    """The value(s) of ``args``'s fields if the user moved any of them off the class default."""
    names = (fields,) if isinstance(fields, str) else fields
    defaults = {f.name: f.default for f in dataclasses.fields(args)}
    values = tuple(getattr(args, n) for n in names)
    if all(math.isclose(v, defaults[n], rel_tol=0, abs_tol=0) for n, v in zip(names, values, strict=True)):
        return None
    return values[0] if isinstance(fields, str) else values


def optimizer_kwargs(name: str, args: Any) -> dict[str, Any]:
    """Constructor kwargs for ``name`` from ``TrainingArguments``-like ``args``.

    lr and weight decay always come from ``args``; Adam-style ``adam_beta1/2`` and ``adam_epsilon``
    reach knobs of the same meaning only when set away from ``TrainingArguments``' own defaults, so
    an optimizer keeps its paper's defaults (AdaShift's eps 1e-10, ...) unless asked otherwise;
    ``optim_args`` overrides everything.
    """
    entry = _entry(name)
    kwargs: dict[str, Any] = {"lr": args.learning_rate, "weight_decay": args.weight_decay, **entry.fixed}
    for knob, fields in entry.hf_args.items():
        value = _changed_fields(args, fields)
        if value is not None:
            kwargs[knob] = value
    kwargs.update(parse_optim_args(name, getattr(args, "optim_args", None)))
    return kwargs


def create_optimizer(name: str, params: Iterable[Any], **kwargs: Any) -> torch.optim.Optimizer:
    """Build the optimizer registered as ``name`` (plain PyTorch entry, outside ``Trainer``)."""
    entry = _entry(name)
    return entry.cls(params, **{**entry.fixed, **kwargs})


# ----------------------------------------------------------------------------------------------
# Transformers: OptimizerNames members + Trainer handlers
# ----------------------------------------------------------------------------------------------
def _reduce_as_str(value: str) -> Any:
    # Pickles as the plain string, so ``training_args.bin`` loads in a process that never imported
    # hf_adasam (``TrainingArguments`` accepts the string and converts it again on use).
    return lambda *_: (str, (value,))


def _add_member(enum_cls: Any, name: str, value: str) -> None:
    if value in enum_cls._value2member_map_:
        return
    member = str.__new__(enum_cls, value)
    member._name_ = name
    member._value_ = value
    member.__objclass__ = enum_cls
    member.__reduce_ex__ = _reduce_as_str(value)
    member._sort_order_ = len(enum_cls._member_names_)
    type.__setattr__(enum_cls, name, member)
    enum_cls._member_map_[name] = member
    enum_cls._value2member_map_[value] = member
    enum_cls._member_names_.append(name)


def _optim_name(args: Any) -> str:
    return str(getattr(args.optim, "value", args.optim))


def resolve_sam_settings(args: Any) -> dict[str, Any]:
    """SAM settings from ``args``: ``sam_*`` fields (``SAMTrainingArguments``) over ``optim_args`` keys.

    ``rho`` is resolved to a number: given, else the method's default for a name that asks for SAM
    (``adasam``), else 0 (off). Unset knobs are left out so the method's defaults apply.
    """
    from .sharpness import DEFAULT_RHO

    settings = parse_sam_args(getattr(args, "optim_args", None))
    for key in SAM_OPTIM_ARGS:
        value = getattr(args, f"sam_{key}", None)
        if value is not None:
            settings[key] = tuple(value) if isinstance(value, list) else value
    adaptive = bool(settings.get("adaptive", False))
    if settings.get("rho") is None:
        entry = OPTIMIZERS.get(_optim_name(args))
        settings["rho"] = DEFAULT_RHO[adaptive] if entry is not None and entry.sam else 0.0
    from .sam_step import SAMStep

    SAMStep.validate(settings)
    return settings


_NEEDS_SAM_MESSAGE = (
    "These TrainingArguments ask for a sharpness-aware step (optim='adasam', or rho>0 in optim_args), "
    "whose second forward/backward pass plain transformers.Trainer does not run. Use "
    "hf_adasam.SAMTrainer / SAMSeq2SeqTrainer, or start an unmodified script with "
    "`python -m hf_adasam script.py ...` (or `accelerate launch -m hf_adasam script.py ...`); "
    "optim_args='rho=0' runs the base update alone."
)


def _refuse_without_sam_driver(opt: torch.optim.Optimizer, *_: Any) -> None:
    if not getattr(opt, "hf_adasam_sam_driver", False):
        raise RuntimeError(_NEEDS_SAM_MESSAGE)


def _needs_sam_driver(cls: Any) -> Any:
    """A stand-in class for ``cls`` whose instances refuse to step unless a SAM driver (``SAMTrainer``) marks them.

    Its ``__new__`` returns a plain ``cls`` with a step pre-hook, so the optimizer keeps its exact class;
    it is a class (not a function) because Trainer calls a function handler result as a factory.
    """
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        return cls

    def new(_stand_in: type, *args: Any, **kwargs: Any) -> torch.optim.Optimizer:
        opt = cls(*args, **kwargs)
        opt.register_step_pre_hook(_refuse_without_sam_driver)
        return opt

    return type(cls.__name__, (cls,), {"__new__": new, "__module__": cls.__module__, "__doc__": cls.__doc__})


def _handler(ctx: Any) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    name = _optim_name(ctx.args)
    return OPTIMIZERS[name].cls, optimizer_kwargs(name, ctx.args)


def _with_sam(handler: Any) -> Any:
    """Wrap a Trainer optimizer handler: SAM keys leave ``optim_args``; a SAM run gets a guarded class."""
    if getattr(handler, "hf_adasam_wrapped", False):
        return handler

    def wrapped(ctx: Any) -> tuple[Any, dict[str, Any]]:
        sam_on = resolve_sam_settings(ctx.args)["rho"] > 0
        ctx.optim_args = {k: v for k, v in ctx.optim_args.items() if k not in SAM_OPTIM_ARGS}
        cls, kwargs = handler(ctx)
        return (_needs_sam_driver(cls) if sam_on else cls), kwargs

    wrapped.hf_adasam_wrapped = True  # type: ignore[attr-defined]
    wrapped.__wrapped__ = handler  # type: ignore[attr-defined]
    return wrapped


def register() -> None:
    """Make every name in :data:`OPTIMIZERS` a valid ``TrainingArguments(optim=...)``. Idempotent.

    ``import hf_adasam`` calls it; call it again only after something replaced Transformers' tables.
    Every handler (Transformers' own too) learns the SAM keys of ``optim_args``, and an optimizer built
    for a SAM run refuses to step under a Trainer that does not run the second pass.
    """
    import transformers.trainer
    from transformers import trainer_optimizer
    from transformers.training_args import OptimizerNames

    # Trainer's own optim_args parser fails on "eps" with "not enough values to unpack"; ours says what is wrong
    if hasattr(transformers.trainer, "_parse_optim_args"):
        transformers.trainer._parse_optim_args = _split_pairs
    handlers = trainer_optimizer._OPTIMIZER_HANDLERS
    for name in OPTIMIZERS:
        _add_member(OptimizerNames, name.upper(), name)
        handlers[name] = _handler
    for key, handler in handlers.items():
        handlers[key] = _with_sam(handler)


def markdown_table() -> str:
    """The README's optimizer table, generated from :data:`OPTIMIZERS` (a test keeps them equal)."""

    def fmt(v: Any) -> str:
        if v is inspect.Parameter.empty:
            return "required"
        return ":".join(str(x) for x in v) if isinstance(v, tuple) else str(v)

    lines = ["| `optim=` | class | paper | knobs (`optim_args` key=default) | from TrainingArguments |",
             "|---|---|---|---|---|"]
    for e in OPTIMIZERS.values():
        knobs = ", ".join(f"`{k}={fmt(v)}`" for k, v in e.knobs().items() if k not in ("impl", "foreach"))
        fixed = "".join(f" ({k}={v})" for k, v in e.fixed.items())
        hf = ", ".join(f"{k} ← {'/'.join((f,) if isinstance(f, str) else f)}" for k, f in e.hf_args.items())
        cls = f"`{e.cls.__module__.replace('torch.optim.radam', 'torch.optim')}.{e.cls.__name__}`{fixed}"
        lines.append(f"| `{e.name}` | {cls} | {e.paper} | {knobs} | lr, weight_decay{', ' + hf if hf else ''} |")
    return "\n".join(lines)
