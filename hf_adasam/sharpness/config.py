"""``SAMConfig``: every SAM knob once, with its default, its check and its help text (docs/sam.md#knobs).

Everything else derives from this class: ``SAM(...)``'s keywords, ``SAMTrainingArguments``'
``sam_*`` fields (both written out in the source for IDEs and type checkers, generated from this class and
kept equal to it by a test), the SAM keys of ``optim_args`` (:func:`split_sam_keys`), the start-up log line,
the model card, the launcher's ``--help`` and the knob tables of docs/sam.md and docs/algorithms.md. A run
resolves its settings once (:meth:`SAMConfig.resolve`) and keeps the frozen result.

``rho`` has no single default: the method's (0.05, or ASAM's 0.5) where SAM is asked for (``SAM(...)``,
``optim="adasam"``), else 0 (off). It stays ``None`` until :meth:`SAMConfig.resolve` fills it in.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from .._logging import HfAdasamWarning
from ..optim_args import convert, format_value, split_pairs

__all__ = ["DEFAULT_RHO", "POLICIES", "SAMConfig", "knob_table", "split_sam_keys"]

# SAM's radius, and ASAM's (indexed by ``adaptive``): docs/algorithms.md#sam-and-asam
DEFAULT_RHO: dict[bool, float] = {False: 0.05, True: 0.5}
POLICIES = ("always", "ae", "looksam", "ae_looksam")
ASAM_SCOPES = ("all", "weights")
_AE, _LOOK = frozenset({"ae", "ae_looksam"}), frozenset({"looksam", "ae_looksam"})


def _real(lo: float, hi: float = math.inf, hi_open: bool = True) -> Callable[[Any], bool]:
    def ok(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and lo <= v and (v < hi if hi_open else v <= hi)

    return ok


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _knob(default: Any, help: str, allowed: str, check: Callable[[Any], bool], *,
          applies: Callable[[SAMConfig], bool] | None = None, applies_text: str = "", trainer_only: bool = False,
          like: Any = None) -> Any:
    """A field with the facts about one knob in its metadata."""
    return dataclasses.field(default=default, metadata={
        "help": help, "allowed": allowed, "check": check, "applies": applies, "applies_text": applies_text,
        "trainer_only": trainer_only, "like": default if like is None else like})


@dataclasses.dataclass(frozen=True)
class SAMConfig:
    """The sharpness-aware step's settings. Construct with keywords; every value is checked.

    >>> SAMConfig(rho=0.1, policy="ae").policy
    'ae'
    """

    rho: float | None = _knob(
        None, "SAM radius ρ; 0 turns SAM off.", "a number >= 0", lambda v: v is None or _real(0)(v), like=0.0)
    adaptive: bool = _knob(False, "ASAM: scale the perturbation element-wise by T = |w| + η.", "true or false",
                           _is_bool)
    eta: float = _knob(0.01, "ASAM's η in T = |w| + η.", "a number >= 0", _real(0),
                       applies=lambda c: c.adaptive, applies_text="adaptive=true")
    asam_scope: str = _knob(
        "all", "ASAM: which tensors get T = |w| + η. 'all': every trainable tensor (the paper); 'weights': only "
        "tensors whose parameter name contains 'weight', the others T = 1 (the official ASAM code).",
        "'all' or 'weights'", lambda v: v in ASAM_SCOPES, applies=lambda c: c.adaptive, applies_text="adaptive=true")
    policy: str = _knob(
        "always", "When a micro-batch pays the second pass: always (SAM), ae (AE-SAM), looksam (every k-th step, "
        "reusing the stored direction in between), ae_looksam.", ", ".join(POLICIES), lambda v: v in POLICIES)
    ae_delta: float = _knob(0.9, "AE-SAM: EMA factor δ of ‖g‖²'s mean and variance.", "a number in [0, 1)",
                            _real(0, 1), applies=lambda c: c.policy in _AE, applies_text="policy=ae or ae_looksam")
    ae_lambdas: tuple[float, float] = _knob(
        (-1.0, 1.0), "AE-SAM: threshold schedule (λ1, λ2), c_t = λ2 + (λ1 − λ2)·t/T.", "two numbers",
        lambda v: isinstance(v, tuple) and len(v) == 2 and all(_real(-math.inf)(x) for x in v),
        applies=lambda c: c.policy in _AE, applies_text="policy=ae or ae_looksam")
    looksam_k: int = _knob(5, "LookSAM: a SAM step every k optimizer steps.", "an integer >= 1",
                           lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                           applies=lambda c: c.policy == "looksam", applies_text="policy=looksam")
    looksam_alpha: float = _knob(0.7, "LookSAM: weight α of the reused orthogonal component.", "a number >= 0",
                                 _real(0), applies=lambda c: c.policy in _LOOK,
                                 applies_text="policy=looksam or ae_looksam")
    sync_perturbation: bool = _knob(
        False, "Data parallel: average pass-1 gradients across processes first (N processes then equal one with "
        "N× the batch); else each replica perturbs with its own sub-batch. Under FSDP2 always in effect (each "
        "pass reduce-scatters the gradients).", "true or false", _is_bool)
    exact_accumulation: bool = _knob(
        False, "Trainer: one perturbation per optimizer step from the whole accumulated batch (batch b × "
        "accumulation k then equals batch k·b) instead of one per micro-batch.", "true or false", _is_bool,
        trainer_only=True)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):  # HfArgumentParser gives lists for tuple knobs
                value = tuple(value)
                object.__setattr__(self, f.name, value)
            if f.name == "ae_lambdas" and isinstance(value, tuple):
                value = tuple(float(x) if _real(-math.inf)(x) else x for x in value)
                object.__setattr__(self, f.name, value)
            if not f.metadata["check"](value):
                raise ValueError(self.invalid(f.name, value))

    # -- facts about the knobs ------------------------------------------------------------------
    @classmethod
    def knobs(cls, *, trainer: bool = True) -> tuple[dataclasses.Field, ...]:
        return tuple(f for f in dataclasses.fields(cls) if trainer or not f.metadata["trainer_only"])

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @staticmethod
    def default_text(name: str, optim: str | None = None, sam_asked: bool | None = None) -> str:
        """The default as a user should read it; for ``rho`` the one that applies to ``optim``."""
        if name == "rho":
            on = f"{DEFAULT_RHO[False]} (ASAM {DEFAULT_RHO[True]})"
            if sam_asked is None:
                return f"{on} where SAM is asked for (SAM(...), optim=adasam), else 0 (SAM off)"
            where = f" for optim={optim}" if optim else ""
            return f"{on}{where}" if sam_asked else f"0 (SAM off){where}"
        return format_value(SAMConfig.__dataclass_fields__[name].default)

    @classmethod
    def invalid(cls, name: str, value: Any, *, source: str = "", optim: str | None = None,
                sam_asked: bool | None = None) -> str:
        """The one-line message for a bad value: the knob, the value, what is allowed, the default."""
        f = cls.__dataclass_fields__[name]
        shown = value if isinstance(value, str) else format_value(value)
        return (f"{source}{name}={shown!r} is invalid: allowed {f.metadata['allowed']}; "
                f"default {cls.default_text(name, optim, sam_asked)}")

    # -- building one --------------------------------------------------------------------------
    @classmethod
    def from_values(cls, values: Mapping[str, Any], *, source: str = "", optim: str | None = None,
                    sam_asked: bool | None = None, trainer: bool = True) -> SAMConfig:
        """A config from ``values`` (strings are typed by the knob's default). Unknown keys list the known ones."""
        known = {f.name: f for f in cls.knobs(trainer=trainer)}
        typed: dict[str, Any] = {}
        for key, raw in values.items():
            if key not in known:
                raise ValueError(f"{source}unknown SAM knob {key!r}; known: {', '.join(known)}")
            try:
                typed[key] = convert(raw, known[key].metadata["like"])
            except ValueError:
                raise ValueError(cls.invalid(key, raw, source=source, optim=optim, sam_asked=sam_asked)) from None
        for key, value in typed.items():
            if not known[key].metadata["check"](tuple(value) if isinstance(value, list) else value):
                raise ValueError(cls.invalid(key, value, source=source, optim=optim, sam_asked=sam_asked))
        return cls(**typed)

    @classmethod
    def from_optim_args(cls, optim_args: str | Mapping[str, str] | None, *, optim: str | None = None,
                        sam_asked: bool | None = None) -> dict[str, Any]:
        """The SAM keys of ``optim_args``, typed and checked (other keys are the optimizer's)."""
        pairs, _ = split_sam_keys(optim_args)
        cfg = cls.from_values(pairs, source="optim_args: ", optim=optim, sam_asked=sam_asked)
        return {k: getattr(cfg, k) for k in pairs}

    @classmethod
    def resolve(cls, given: Mapping[str, Any], *, sam_asked: bool, optim: str | None = None,
                source: str = "", warn: bool = True) -> SAMConfig:
        """The run's settings: ``given`` knobs over the defaults, ``rho`` filled in. Warns about knobs without effect.

        ``sam_asked``: the caller asked for SAM (``SAM(...)``, ``optim="adasam"``), so an unset ρ takes the
        method's default; otherwise an unset ρ is 0 (off).
        """
        given = {k: v for k, v in given.items() if v is not None}
        cfg = cls.from_values(given, source=source, optim=optim, sam_asked=sam_asked)
        if cfg.rho is None:
            cfg = dataclasses.replace(cfg, rho=DEFAULT_RHO[cfg.adaptive] if sam_asked else 0.0)
        if warn:
            for message in cfg.ineffective(given, optim=optim):
                warnings.warn(message, HfAdasamWarning, stacklevel=3)
        return cfg

    def ineffective(self, given: Mapping[str, Any], *, optim: str | None = None) -> list[str]:
        """Messages for knobs in ``given`` that this config will not use."""
        set_knobs = [k for k in given if k != "rho"]
        if not self.on:
            if not set_knobs:
                return []
            where = f" (optim={optim} does not turn SAM on by itself)" if optim else ""
            return [f"SAM knobs {', '.join(f'{k}={format_value(given[k])}' for k in set_knobs)} have no effect: "
                    f"rho resolves to 0, so SAM is off{where}. Set rho > 0 (e.g. rho={DEFAULT_RHO[False]}) "
                    "to use them."]
        out = []
        for k in set_knobs:
            applies = self.__dataclass_fields__[k].metadata["applies"]
            if applies is not None and not applies(self):
                out.append(f"SAM knob {k}={format_value(given[k])} has no effect: it is used only with "
                           f"{self.__dataclass_fields__[k].metadata['applies_text']}.")
        return out

    # -- reading one ---------------------------------------------------------------------------
    @property
    def on(self) -> bool:
        return bool(self.rho)

    def as_dict(self, *, active_only: bool = False) -> dict[str, Any]:
        """The knobs and values (``active_only``: leave out those the config does not use)."""
        out = {}
        for f in dataclasses.fields(self):
            applies = f.metadata["applies"]
            if active_only and applies is not None and not applies(self):
                continue
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def describe(self) -> str:
        """The start-up log line."""
        if not self.on:
            return "hf-adasam: SAM off (rho=0): plain optimizer steps"
        knobs = ", ".join(f"{k}={format_value(v)}" for k, v in self.as_dict(active_only=True).items())
        return f"hf-adasam: SAM on: {knobs}"


def split_sam_keys(optim_args: str | Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``optim_args`` (a ``"k=v,k=v"`` string or a mapping) split into its SAM keys (:class:`SAMConfig`'s knobs) and
    the rest (the optimizer's keys), each in the given order; the values as given."""
    sam: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for key, value in split_pairs(optim_args).items():
        (sam if key in SAMConfig.__dataclass_fields__ else rest)[key] = value
    return sam, rest


def knob_table() -> str:
    """The SAM knob table of docs/sam.md#knobs, generated from :class:`SAMConfig` (a test keeps them equal)."""
    lines = ["| knob (`SAM(...)` keyword, `optim_args` key; `SAMTrainingArguments`: `sam_<knob>`) | default | allowed "
             "| what it does |", "|---|---|---|---|"]
    for f in SAMConfig.knobs():
        cells = (SAMConfig.default_text(f.name), f.metadata["allowed"], f.metadata["help"])
        lines.append(f"| `{f.name}` | " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)
