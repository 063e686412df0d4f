"""One table from ``optim`` names to optimizers (plain PyTorch; ``hf_adasam.transformers_integration``
hooks it into Transformers).

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

from .optim import Adai, AdaSAM, AdaShift, CPropAdam, CPropSGD, GenericAdam, RAdam, SETAdam
from .optim_args import convert, format_value
from .sharpness.config import SAMConfig, split_sam_keys

__all__ = ["OPTIMIZERS", "OptimEntry", "create_optimizer", "markdown_table", "optimizer_kwargs", "parse_optim_args"]

# Knobs that the Trainer fills itself (param groups carry lr and weight decay) or that select the
# kernel rather than the algorithm: never set through ``optim_args``.
_MANAGED = frozenset({"params", "lr", "weight_decay"})
# torch.optim.RAdam arguments (hf-adasam's RAdam keeps them) that are not algorithm knobs.
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
            RAdam,
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


def _entry(name: str) -> OptimEntry:
    try:
        return OPTIMIZERS[str(name)]
    except KeyError:
        raise ValueError(f"Unknown optimizer {name!r}; hf-adasam knows: {', '.join(OPTIMIZERS)}") from None


def parse_optim_args(name: str, optim_args: str | Mapping[str, str] | None) -> dict[str, Any]:
    """Typed optimizer kwargs from ``optim_args`` (a ``"k=v,k=v"`` string or a parsed mapping).

    SAM keys (:class:`~hf_adasam.sharpness.SAMConfig`'s) are skipped here: they configure the SAM step.
    """
    knobs = _entry(name).knobs()
    out: dict[str, Any] = {}
    _, own = split_sam_keys(optim_args)
    for key, raw in own.items():
        if key not in knobs:
            raise ValueError(
                f"optim_args: unknown key {key!r} for optim={name!r}; valid keys: {', '.join(sorted(knobs))} "
                f"(and the SAM keys {', '.join(SAMConfig.names())})"
            )
        default = knobs[key]
        if default is inspect.Parameter.empty:
            default = 0.0  # a required knob is a float
        elif default is None:
            default = ""  # a None default is a string choice (impl)
        try:
            out[key] = convert(raw, default)
        except ValueError:
            raise ValueError(f"optim_args: {key}={raw!r} is invalid for optim={name!r}: allowed a value of the "
                             f"default's type ({type(default).__name__}); default {key}={format_value(default)}"
                             ) from None
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
        cls = f"`{e.cls.__module__}.{e.cls.__name__}`{fixed}"
        lines.append(f"| `{e.name}` | {cls} | {e.paper} | {knobs} | lr, weight_decay{', ' + hf if hf else ''} |")
    return "\n".join(lines)
