"""The Transformers integration: the ``optim`` names, ``SAMTrainingArguments``, ``SAMTrainer``, the
launcher for unmodified scripts and the model card.

- :mod:`.registration`: :func:`register`, the names for ``TrainingArguments(optim=...)`` and plain ``Trainer``;
- :mod:`.arguments`: ``SAMTrainingArguments`` (fields generated from :class:`~hf_adasam.sharpness.SAMConfig`);
- :mod:`.trainer`: ``SAMTrainer`` (public ``Trainer`` methods overridden);
- :mod:`.launcher`: ``python -m hf_adasam script.py ...``;
- :mod:`.card`: the card writer and its template;
- :mod:`._internals`: every private Transformers name used, with the versions checked.

Importing this package registers the names (the arguments classes need them); ``transformers.trainer``
loads only with the Trainer classes.
"""

from typing import Any

from .registration import register

register()

_LAZY = {"SAMTrainingArguments": "arguments", "SAMSeq2SeqTrainingArguments": "arguments", "SAMTrainer": "trainer",
         "SAMSeq2SeqTrainer": "trainer", "SAMTrainerMixin": "trainer"}

__all__ = ["register", *_LAZY]


def __getattr__(name: str) -> Any:
    """The Trainer classes load on first use: ``transformers.trainer`` alone takes seconds to import."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
