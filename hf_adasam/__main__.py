"""Run an unmodified Transformers script with hf-adasam's names and SAM-aware trainers.

    python -m hf_adasam path/to/run_glue.py --optim adasam --optim_args "rho=0.05,policy=ae" ...
    accelerate launch -m hf_adasam path/to/run_glue.py --optim adasam ...

Registers the ``optim`` names, makes ``transformers.Trainer`` / ``Seq2SeqTrainer`` the SAM-aware
subclasses for the script (which finds them by ``from transformers import Trainer``), then runs
the script as ``__main__`` with its own arguments.
"""

from __future__ import annotations

import runpy
import sys


def patch_transformers() -> None:
    """Point ``transformers.Trainer`` and ``Seq2SeqTrainer`` (and their modules' names) at the SAM-aware ones."""
    import transformers
    import transformers.trainer
    import transformers.trainer_seq2seq

    from . import register
    from .trainer import SAMSeq2SeqTrainer, SAMTrainer

    register()
    for module in (transformers, transformers.trainer):
        module.Trainer = SAMTrainer
    for module in (transformers, transformers.trainer_seq2seq):
        module.Seq2SeqTrainer = SAMSeq2SeqTrainer


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if argv else 2)
    patch_transformers()
    script, *rest = argv
    sys.argv = [script, *rest]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
