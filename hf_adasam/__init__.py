"""hf-adasam: sharpness-aware and adaptive optimizers for the Hugging Face training stack.

``import hf_adasam`` gives the optimizers, :class:`SAM` and the name table, and imports no Transformers
code. The Transformers integration loads on first use: ``hf_adasam.register()`` makes the names valid
``TrainingArguments(optim=...)`` values (``SAMTrainingArguments`` and ``SAMTrainer`` do it themselves),
and ``hf_adasam.SAMTrainer`` / ``SAMTrainingArguments`` come from
:mod:`hf_adasam.transformers_integration`.

Layout: :mod:`hf_adasam.optim` (the algorithms), :mod:`hf_adasam.registry` (names → optimizers),
:mod:`hf_adasam.sharpness` (SAM: config, perturbation, policies, micro-step, ``SAM``),
:mod:`hf_adasam.transformers_integration` (registration, arguments, trainer, launcher, card),
:mod:`hf_adasam.sharding` (FSDP2: shard-local work and the all-reduces that make statistics global),
:mod:`hf_adasam.generic_adam_theory` (Generic Adam's convergence condition, Reddi's counterexample).
"""

from typing import Any

from . import optim
from .optim import *  # noqa: F403  (every optimizer class; hf_adasam.optim.__all__ lists them)
from .registry import OPTIMIZERS, create_optimizer
from .sharpness import SAM, SAMConfig

__version__ = "0.1.0"

_INTEGRATION_NAMES = ("SAMSeq2SeqTrainer", "SAMSeq2SeqTrainingArguments", "SAMTrainer", "SAMTrainerMixin",
                      "SAMTrainingArguments", "register")

__all__ = [
    "OPTIMIZERS",
    "SAM",
    "SAMConfig",
    "create_optimizer",
    *_INTEGRATION_NAMES,
]
__all__ += optim.__all__  # every optimizer class (a form type checkers follow)


def __getattr__(name: str) -> Any:
    if name in _INTEGRATION_NAMES:
        from . import transformers_integration

        return getattr(transformers_integration, name)
    raise AttributeError(f"module 'hf_adasam' has no attribute {name!r}")
