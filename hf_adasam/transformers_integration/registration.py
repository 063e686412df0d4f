"""Make hf-adasam's names valid ``TrainingArguments(optim=...)`` values for plain ``Trainer`` too, and refuse a
sharpness-aware optimizer wherever no SAM step would run it.

``SAMTrainer`` needs none of this beyond the names themselves (it builds optimizers in the public
``get_optimizer_cls_and_kwargs``); a plain ``transformers.Trainer`` finds optimizers through a private
table, and everything private lives in :mod:`._internals`.

No silent SAM-off: an optimizer that needs SAM (an :data:`~hf_adasam.registry.OPTIMIZERS` entry with ``sam=True``,
by name or as an instance) under a Trainer that does not run the second pass is refused when that Trainer is
built (:class:`SAMGuard`, a ``TrainerCallback`` among Transformers' default callbacks: ``on_init_end``), at the
latest when it builds or prepares the optimizer (the wrapped handler; ``on_train_begin``), before the first forward.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import sys
from collections.abc import Iterator
from typing import Any

from transformers import TrainerCallback

from ..registry import OPTIMIZERS, optimizer_kwargs, parse_optim_args
from ..sharpness.config import SAMConfig, split_sam_keys
from . import _internals
from .arguments import optim_name, resolve_sam_config

__all__ = ["NEEDS_SAM_MESSAGE", "SAMGuard", "install_trainer_guard", "needs_sam_message", "needs_sam_step",
           "refuse_instance", "register", "rho_given", "sam_driver"]

_HOW = ("Use hf_adasam.SAMTrainer / SAMSeq2SeqTrainer, or mix SAM into your Trainer class with "
        "hf_adasam.SAMTrainerMixin first in its bases (class MyTrainer(SAMTrainerMixin, SFTTrainer)), or start an "
        "unmodified script with `python -m hf_adasam script.py ...` (or `accelerate launch -m hf_adasam script.py "
        "...`); optim_args='rho=0' runs the base update alone.")

NEEDS_SAM_MESSAGE = (
    "These TrainingArguments ask for a sharpness-aware step (optim='adasam', or rho>0 in optim_args), "
    f"whose second forward/backward pass this Trainer (not a SAMTrainer) does not run. {_HOW}"
)

# set while a SAMTrainerMixin builds itself or its optimizer: the guard and the handlers then leave the checks to it
_SAM_DRIVER: contextvars.ContextVar[bool] = contextvars.ContextVar("hf_adasam_sam_driver", default=False)


def needs_sam_message(what: str, trainer: str = "this Trainer") -> str:
    """The refusal: ``what`` asks for SAM, ``trainer`` does not run its second pass, and the three ways that do."""
    return (f"{what} asks for a sharpness-aware step, whose second forward/backward pass {trainer} (not a "
            f"SAMTrainer) does not run. {_HOW}")


@contextlib.contextmanager
def sam_driver() -> Iterator[None]:
    """Marks the code inside as run by a SAM trainer (the guard stands aside; unknown optim_args keys are errors)."""
    token = _SAM_DRIVER.set(True)
    try:
        yield
    finally:
        _SAM_DRIVER.reset(token)


def _sam_classes() -> tuple[type, ...]:
    return tuple({e.cls for e in OPTIMIZERS.values() if e.sam})


def unwrap(opt: Any) -> Any:
    """The torch optimizer inside Accelerate's (or another) wrapper's ``.optimizer`` chain."""
    seen = 0
    while opt is not None and not isinstance(opt, _sam_classes()) and hasattr(opt, "optimizer") and seen < 8:
        opt, seen = opt.optimizer, seen + 1
    return opt


def needs_sam_step(opt: Any) -> bool:
    """Whether ``opt`` (an instance, possibly wrapped) is one of the registry's SAM-asking optimizers (``adasam``)."""
    return isinstance(unwrap(opt), _sam_classes())


def rho_given(args: Any) -> bool:
    """Whether ``args`` set ρ explicitly (``sam_rho``, or ``rho`` in ``optim_args``): ``rho=0`` then means SAM off."""
    if getattr(args, "sam_rho", None) is not None:
        return True
    return "rho" in SAMConfig.from_optim_args(getattr(args, "optim_args", None))


def refuse_instance(opt: Any, args: Any, trainer: str = "this Trainer") -> None:
    """An instance that needs SAM, not marked by a SAM trainer, with no explicit ``rho=0``: refused."""
    if not needs_sam_step(opt) or getattr(unwrap(opt), "hf_adasam_sam_driver", False):
        return
    if args is not None and rho_given(args) and not resolve_sam_config(args, warn=False).on:
        return  # rho=0 asked for the base update alone
    raise RuntimeError(needs_sam_message(f"The optimizer instance {type(unwrap(opt)).__name__} (optimizers=(opt, ...))",
                                         trainer))


class SAMGuard(TrainerCallback):
    """Among every Trainer's default callbacks: refuses a SAM request that no SAM step will run.

    ``on_init_end`` (the end of ``Trainer.__init__``): SAM asked by ``optim``/``optim_args``, or an optimizer
    instance that needs SAM, in a Trainer that is not a ``SAMTrainerMixin``. ``on_train_begin`` (the optimizer
    built, before the first forward): the optimizer needs SAM and no SAM step marked it
    (``optimizer_cls_and_kwargs=``, or an instance under a SAM trainer whose ρ resolves to 0).
    """

    def on_init_end(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        if _SAM_DRIVER.get():
            return
        if optim_name(args) in OPTIMIZERS:  # a bad key first: its error names what is valid
            parse_optim_args(optim_name(args), args.optim_args)
        if resolve_sam_config(args, warn=False).on:
            raise RuntimeError(NEEDS_SAM_MESSAGE)
        refuse_instance(optimizer, args)

    def on_train_begin(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        refuse_instance(optimizer, args)


def install_trainer_guard() -> None:
    """Put :class:`SAMGuard` among the callbacks every ``Trainer`` (TRL's too) is built with. Idempotent."""
    callbacks = _internals.default_callbacks()
    if SAMGuard not in callbacks:
        callbacks.append(SAMGuard)


def install_guard_if_trainer_loaded() -> None:
    """The guard, where ``transformers.trainer`` is already imported (``register()`` itself never imports it)."""
    if "transformers.trainer" in sys.modules:
        install_trainer_guard()


class _ReadKeys(dict):
    """``optim_args`` as a handler sees it, remembering which keys it asked about (all of them, if it iterated)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.asked: set[str] = set()
        self.iterated = False

    def __contains__(self, key: object) -> bool:
        self.asked.add(str(key))
        return super().__contains__(key)

    def __getitem__(self, key: str) -> Any:
        self.asked.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)

    def pop(self, key: str, *default: Any) -> Any:
        self.asked.add(key)
        return super().pop(key, *default)

    def __iter__(self) -> Iterator[str]:
        self.iterated = True
        return super().__iter__()

    def keys(self) -> Any:
        self.iterated = True
        return super().keys()

    def items(self) -> Any:
        self.iterated = True
        return super().items()

    def copy(self) -> dict[str, Any]:
        self.iterated = True
        return dict(super().items())


def _constructor_keys(cls: Any) -> list[str]:
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return []
    return [n for n, p in params.items() if n not in ("self", "params") and p.kind not in (p.VAR_POSITIONAL,
                                                                                         p.VAR_KEYWORD)]


def unknown_key_error(key: str, name: str, valid: list[str], cls: Any) -> ValueError:
    """The one-line error for an ``optim_args`` key that neither SAM nor the optimizer reads."""
    where = f"{getattr(cls, '__module__', '')}.{getattr(cls, '__qualname__', cls)}"
    keys = ", ".join(sorted(valid)) if valid else (
        f"none (Transformers builds {where} from TrainingArguments and passes it no optim_args key)")
    return ValueError(f"optim_args: unknown key {key!r} for optim={name!r}: allowed the SAM keys "
                      f"{', '.join(SAMConfig.names())} and {name}'s keys: {keys}; default optim_args: none")


def _handler(ctx: Any) -> tuple[type, dict[str, Any]]:
    name = optim_name(ctx.args)
    return OPTIMIZERS[name].cls, optimizer_kwargs(name, ctx.args)


def _with_sam(handler: Any) -> Any:
    """Wrap a plain-Trainer handler: SAM keys leave ``optim_args``. Outside a SAM trainer, a SAM run is refused here
    (``create_optimizer``, before the first forward); inside one, a key the handler never reads is an error."""
    if getattr(handler, "hf_adasam_wrapped", False):
        return handler

    def wrapped(ctx: Any) -> tuple[Any, dict[str, Any]]:
        driven = _SAM_DRIVER.get()
        if not driven and resolve_sam_config(ctx.args, warn=False).on:
            raise RuntimeError(NEEDS_SAM_MESSAGE)
        _, own = split_sam_keys(ctx.optim_args)
        ctx.optim_args = _ReadKeys(own)
        given = list(ctx.optim_args)
        ctx.optim_args.iterated = False
        cls, kwargs = handler(ctx)
        if driven and given and optim_name(ctx.args) not in OPTIMIZERS:  # hf-adasam's names: parse_optim_args
            read = ctx.optim_args
            valid = _constructor_keys(cls) if read.iterated else sorted(read.asked)
            for key in given:
                if key not in valid:
                    raise unknown_key_error(key, optim_name(ctx.args), valid, cls)
        return cls, kwargs

    wrapped.hf_adasam_wrapped = True  # type: ignore[attr-defined]
    wrapped.__wrapped__ = handler  # type: ignore[attr-defined]
    return wrapped


def register() -> None:
    """Make every name in :data:`~hf_adasam.registry.OPTIMIZERS` a valid ``TrainingArguments(optim=...)``. Idempotent.

    Plain ``Trainer`` then builds them too; its handlers (Transformers' own as well) learn the SAM keys of
    ``optim_args``, and a SAM run is refused by a Trainer that does not run the second pass (see the module's
    docstring). Raises ``RuntimeError`` if a Transformers internal it needs has moved. Imports no
    ``transformers.trainer``: the Trainer guard is installed here only if that module is loaded already (else by
    ``SAMTrainerMixin``'s module, or by an hf-adasam optimizer built once it is).
    """
    from transformers.training_args import OptimizerNames

    handlers = _internals.optimizer_handlers()
    for name in OPTIMIZERS:
        _internals.add_enum_member(OptimizerNames, name.upper(), name)
        handlers[name] = _handler
    for key, handler in handlers.items():
        handlers[key] = _with_sam(handler)
    install_guard_if_trainer_loaded()
