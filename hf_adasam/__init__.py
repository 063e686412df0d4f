"""hf-adasam: sharpness-aware and adaptive optimizers for the Hugging Face training stack.

Importing the package registers its ``optim`` names with Transformers (see :func:`register`), so
``TrainingArguments(optim="set_adam")`` validates and ``Trainer`` builds the optimizer. The
``Trainer`` subclasses load on first use (``hf_adasam.SAMTrainer``), keeping the import light.
"""

from typing import Any

from .optim import Adai, AdaSAM, AdaShift, CPropAdam, CPropSGD, GenericAdam, SETAdam
from .registry import OPTIMIZERS, create_optimizer, register
from .sam import SAM

__version__ = "0.1.0"

_TRAINER_NAMES = ("SAMSeq2SeqTrainer", "SAMSeq2SeqTrainingArguments", "SAMTrainer", "SAMTrainerMixin",
                  "SAMTrainingArguments")

__all__ = [
    "OPTIMIZERS",
    "SAM",
    "AdaSAM",
    "AdaShift",
    "Adai",
    "CPropAdam",
    "CPropSGD",
    "GenericAdam",
    "SETAdam",
    "create_optimizer",
    "register",
    *_TRAINER_NAMES,
]


def __getattr__(name: str) -> Any:
    if name in _TRAINER_NAMES:
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'hf_adasam' has no attribute {name!r}")


register()
