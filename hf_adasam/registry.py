"""One table from ``optim`` names to optimizers (plain PyTorch; ``hf_adasam.transformers_integration``
hooks it into Transformers).

Every fact about a name lives in its :class:`OptimEntry`: the class, the paper, which
``TrainingArguments`` fields feed which knob, and fixed arguments. Knob defaults are *not* repeated
here: they are read from the class's constructor signature (docs/algorithms.md tabulates them per name).

An entry also states what the algorithm is documented to do, for the tests and benchmarks to read
(``CONTRIBUTING.md``, "Add an optimizer"): the state it keeps (:class:`Variant`), the memory traffic and
compiled kernels of a step, and how far a non-finite gradient spreads. These are claims written from the
algorithm, never computed from the implementation: the tests measure the implementation and compare.
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

__all__ = ["OPTIMIZERS", "OptimEntry", "Variant", "create_optimizer", "markdown_table", "nonfinite_table",
           "optimizer_kwargs", "parse_optim_args", "variants"]

# Knobs that the Trainer fills itself (param groups carry lr and weight decay) or that select the
# kernel rather than the algorithm: never set through ``optim_args``.
_MANAGED = frozenset({"params", "lr", "weight_decay"})
# torch.optim.RAdam arguments (hf-adasam's RAdam keeps them) that are not algorithm knobs.
_NOT_KNOBS = frozenset({"foreach", "maximize", "capturable", "differentiable"})


# How far one non-finite gradient entry spreads into the weights (the first word of a ``nonfinite`` cell)
SPREAD = ("coordinate", "tensor", "all")


@dataclasses.dataclass(frozen=True)
class Variant:
    """A setting of an optimizer's knobs that takes code paths of its own, and the state it then keeps.

    The tests run every variant of every entry: the differential net (every impl and dtype against the float64
    single-tensor loop), the property tests, and the memory test, which counts the state's arrays against
    ``state_arrays``.
    """

    state_arrays: int  # tensors of the parameter's size in the state once warmed up, as the algorithm documents
    knobs: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # constructor arguments beside the defaults


@dataclasses.dataclass(frozen=True)
class OptimEntry:
    name: str
    cls: type[torch.optim.Optimizer]
    paper: str
    # constructor knob -> TrainingArguments field(s) it is read from, where the meaning is the same
    hf_args: Mapping[str, str | tuple[str, ...]] = dataclasses.field(default_factory=dict)
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    sam: bool = False  # the name asks for the SAM perturbation (rho defaults on)
    _: dataclasses.KW_ONLY
    # What the algorithm is documented to do; the tests check the implementation against it (CONTRIBUTING.md).
    state: str  # the state it keeps, in words
    # knob settings with code paths of their own, by suffix: "" (or the first) is the base, named ``name``; the
    # others ``name_suffix`` (the net's variant names)
    variants: Mapping[str, Variant]
    # fp32 arrays read + written per element per step by the least-traffic schedule of the algorithm, at the
    # defaults with ``bench`` (p and g read, p written, each state array read and written; a pass that needs a
    # reduction first reads its inputs once more): optim_step's memory-traffic floor
    traffic: int
    kernels: int  # compiled kernels a step runs per param group (a reduction that must finish first is one more)
    # how far one inf / one NaN gradient entry spreads: a SPREAD word, then why (the README's non-finite table)
    nonfinite: tuple[str, str]
    overflow_nan: bool = False  # float32 gradients whose square overflows (|g| > ~1.8e19) make NaN weights
    lr: float = 1e-2  # an lr on the method's own scale: a dozen steps at it visibly move the weights
    # knobs the benchmarks (and dispatch tests) add to the defaults, where a default leaves part of the method idle
    bench: Mapping[str, Any] = dataclasses.field(default_factory=dict)

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

    def named_variants(self) -> dict[str, Variant]:
        """The variants by their full names, ``name_suffix`` (``name`` for the suffix ""); the first is the base."""
        return {f"{self.name}_{k}" if k else self.name: v for k, v in self.variants.items()}

    def bench_kwargs(self) -> dict[str, Any]:
        """Constructor kwargs of a representative run (benchmarks, dispatch tests): ``lr`` and ``bench``."""
        return {"lr": self.lr, **self.bench}


_ADAM_ARGS = MappingProxyType({"betas": ("adam_beta1", "adam_beta2"), "eps": "adam_epsilon"})

_COORDINATE = ("coordinate", "coordinate")
_ADAI = "Xie et al. ICML 2022, arXiv 2006.15815"
_CPROP = "Preechakul & Kijsirikul 2019, arXiv 1912.06334"

# The traffic counts name each array a step reads (r) and writes (w); "pass 1" is a reduction that must finish
# before the element-wise update (pass 2) can start.
OPTIMIZERS: dict[str, OptimEntry] = {
    e.name: e
    for e in (
        OptimEntry(
            "adasam", AdaSAM, "Sun et al. 2023, arXiv 2303.00565", _ADAM_ARGS, sam=True,
            state="m, v and v̂ (AMSGrad's running max of v)",
            variants={"": Variant(3), "bias_correction": Variant(3, {"bias_correction": True})},
            traffic=9, kernels=1, nonfinite=_COORDINATE,  # AMSGrad's: p r/w, g r, m, v, v̂ r/w
        ),
        OptimEntry(
            "set_adam", SETAdam, "Zhang 2023, arXiv 2302.01029", {"betas": ("adam_beta1", "adam_beta2")},
            state="m, v",
            variants={"": Variant(2), "p1_tau0.9": Variant(2, {"p": 1.0, "tau": 0.9})},
            # pass 1: g, v r (each tensor's cosine and minimum of v_t); pass 2: p r/w, g r, m r/w, v r/w
            traffic=9, kernels=2, nonfinite=("tensor (its cosine and minimum)", "tensor"), overflow_nan=True,
        ),
        OptimEntry(
            "radam", RAdam, "Liu et al. ICLR 2020, arXiv 1908.03265", _ADAM_ARGS,
            fixed={"decoupled_weight_decay": True},
            state="m, v (torch.optim.RAdam's)",
            variants={"": Variant(2)},
            traffic=7, kernels=1, nonfinite=_COORDINATE,  # p r/w, g r, m r/w, v r/w
        ),
        OptimEntry(
            "adai", Adai, _ADAI,
            state="m, v and 1 − P_t",
            variants={"": Variant(3)},
            # pass 1: p, g, v r (the mean of v_t; coupled decay adds λp to g); pass 2: p r/w, g r, m, v, 1 − P_t r/w
            traffic=12, kernels=2, overflow_nan=True, lr=0.1,
            nonfinite=("all parameters (v̄, then the NaN weight through coupled decay)", "all parameters"),
        ),
        OptimEntry(
            "adaiw", Adai, _ADAI, fixed={"decoupled": True},
            state="m, v and 1 − P_t",
            variants={"": Variant(3)},
            traffic=11, kernels=2, overflow_nan=True, lr=0.1,  # adai's, pass 1 without p
            nonfinite=("coordinate (v̄ = inf: every other coordinate's β1 is 1 − ε from then on)", "all parameters"),
        ),
        OptimEntry(
            "adashift", AdaShift, "Zhou et al. ICLR 2019, arXiv 1810.00143", _ADAM_ARGS,
            state="m and the window of the last n gradients (φ = max/mean: v and the gate's c are one number per "
                  "tensor; φ = none: two more arrays, element-wise)",
            # n = 3: a window short enough that a dozen steps are mostly updates, not filling it
            variants={"max": Variant(1 + 3, {"n": 3}), "mean": Variant(1 + 3, {"n": 3, "phi": "mean"}),
                      "none": Variant(1 + 3 + 2, {"n": 3, "phi": "none"})},
            # pass 1: the max of the leaving gradient (r); pass 2: p r/w, g r, m r/w, the window's slot r/w
            traffic=8, kernels=2,
            nonfinite=("coordinate (φ = max/mean: once the entry leaves the window, v = inf stops the rest of the "
                       "tensor)", "tensor, once the entry leaves the window (φ = none: coordinate)"),
        ),
        OptimEntry(
            "cprop_adam", CPropAdam, _CPROP, _ADAM_ARGS,
            state="m, v and CProp's running moments μ and M",
            variants={"": Variant(4, {"cprop_beta": 0.9})},
            traffic=11, kernels=1, nonfinite=_COORDINATE,  # p r/w, g r, m, v, μ, M r/w
        ),
        OptimEntry(
            "cprop_sgd", CPropSGD, _CPROP,
            state="CProp's running moments μ and M, and the momentum buffer when momentum > 0 (torch.optim.SGD's)",
            variants={"": Variant(2, {"cprop_beta": 0.9}),
                      "momentum": Variant(3, {"momentum": 0.9, "dampening": 0.1, "cprop_beta": 0.9}),
                      "nesterov": Variant(3, {"momentum": 0.9, "nesterov": True, "cprop_beta": 0.9})},
            traffic=9, kernels=1, nonfinite=_COORDINATE, lr=0.05,  # p r/w, g r, buffer, μ, M r/w
            bench={"momentum": 0.9},
        ),
        OptimEntry(
            "generic_adam", GenericAdam, "Zou et al. CVPR 2019, arXiv 1811.09358",
            state="m, v",
            variants={
                "": Variant(2),
                # AdaGrad: β = 0, θ_t = 1 − 1/t, α_t = lr/√t
                "adagrad": Variant(2, {"beta": 0.0, "theta": 0.0, "theta_power": 1.0, "lr_power": 0.5}),
                "callables": Variant(2, {"beta": lambda t: 0.9 - 0.4 / t, "theta": lambda t: 1 - 0.5 / t}),
            },
            traffic=7, kernels=1, nonfinite=_COORDINATE,  # p r/w, g r, m r/w, v r/w
        ),
    )
}


def variants() -> dict[str, tuple[OptimEntry, Variant]]:
    """Every variant of every entry by its full name (``adasam``, ``adasam_bias_correction``, ...)."""
    return {n: (e, v) for e in OPTIMIZERS.values() for n, v in e.named_variants().items()}


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


def nonfinite_table() -> str:
    """The table of how far a non-finite gradient entry spreads, from the entries' ``nonfinite`` claims
    (docs/generate.py writes it into docs/numerics.md, tests/test_docs.py keeps it equal; tests/test_kernel_net.py
    checks each claim's first word)."""
    lines = ["| `optim=` | one inf gradient entry makes NaN | one NaN gradient entry makes NaN |", "|---|---|---|"]
    lines += [f"| `{e.name}` | {e.nonfinite[0]} | {e.nonfinite[1]} |" for e in OPTIMIZERS.values()]
    return "\n".join(lines)
