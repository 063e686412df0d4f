"""hf-adasam: sharpness-aware and adaptive optimizers for the Hugging Face training stack.

Importing the package registers its ``optim`` names with Transformers (see :func:`register`), so
``TrainingArguments(optim="set_adam")`` validates and ``Trainer`` builds the optimizer.
"""

from .optim import Adai, AdaSAM, AdaShift, CPropAdam, CPropSGD, GenericAdam, SETAdam
from .registry import OPTIMIZERS, create_optimizer, register

__version__ = "0.1.0"
__all__ = [
    "OPTIMIZERS",
    "AdaSAM",
    "AdaShift",
    "Adai",
    "CPropAdam",
    "CPropSGD",
    "GenericAdam",
    "SETAdam",
    "create_optimizer",
    "register",
]

register()
