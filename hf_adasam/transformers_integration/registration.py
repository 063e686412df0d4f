"""Make hf-adasam's names valid ``TrainingArguments(optim=...)`` values for plain ``Trainer`` too.

``SAMTrainer`` needs none of this beyond the names themselves (it builds optimizers in the public
``get_optimizer_cls_and_kwargs``); a plain ``transformers.Trainer`` finds optimizers through a private
table, and everything private lives in :mod:`._internals`.
"""

from __future__ import annotations

from typing import Any

import torch

from ..registry import OPTIMIZERS, optimizer_kwargs
from ..sharpness.config import SAMConfig
from . import _internals
from .arguments import optim_name, resolve_sam_config

__all__ = ["NEEDS_SAM_MESSAGE", "register"]

NEEDS_SAM_MESSAGE = (
    "These TrainingArguments ask for a sharpness-aware step (optim='adasam', or rho>0 in optim_args), "
    "whose second forward/backward pass plain transformers.Trainer does not run. Use "
    "hf_adasam.SAMTrainer / SAMSeq2SeqTrainer, or start an unmodified script with "
    "`python -m hf_adasam script.py ...` (or `accelerate launch -m hf_adasam script.py ...`); "
    "optim_args='rho=0' runs the base update alone."
)


def _refuse_without_sam_driver(opt: torch.optim.Optimizer, *_: Any) -> None:
    if not getattr(opt, "hf_adasam_sam_driver", False):
        raise RuntimeError(NEEDS_SAM_MESSAGE)


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
    name = optim_name(ctx.args)
    return OPTIMIZERS[name].cls, optimizer_kwargs(name, ctx.args)


def _with_sam(handler: Any) -> Any:
    """Wrap a plain-Trainer handler: SAM keys leave ``optim_args``; a SAM run gets a guarded class."""
    if getattr(handler, "hf_adasam_wrapped", False):
        return handler

    def wrapped(ctx: Any) -> tuple[Any, dict[str, Any]]:
        config = getattr(ctx.args, "sam_config", None) or resolve_sam_config(ctx.args, warn=False)
        sam_on = config.on
        ctx.optim_args = {k: v for k, v in ctx.optim_args.items() if k not in SAMConfig.__dataclass_fields__}
        cls, kwargs = handler(ctx)
        return (_needs_sam_driver(cls) if sam_on else cls), kwargs

    wrapped.hf_adasam_wrapped = True  # type: ignore[attr-defined]
    wrapped.__wrapped__ = handler  # type: ignore[attr-defined]
    return wrapped


def register() -> None:
    """Make every name in :data:`~hf_adasam.registry.OPTIMIZERS` a valid ``TrainingArguments(optim=...)``. Idempotent.

    Plain ``Trainer`` then builds them too; its handlers (Transformers' own as well) learn the SAM keys of
    ``optim_args``, and an optimizer built for a SAM run refuses to step under a Trainer that does not run
    the second pass. Raises ``RuntimeError`` if a Transformers internal it needs has moved.
    """
    from transformers.training_args import OptimizerNames

    handlers = _internals.optimizer_handlers()
    for name in OPTIMIZERS:
        _internals.add_enum_member(OptimizerNames, name.upper(), name)
        handlers[name] = _handler
    for key, handler in handlers.items():
        handlers[key] = _with_sam(handler)
