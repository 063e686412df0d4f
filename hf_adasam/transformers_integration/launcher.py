"""``python -m hf_adasam script.py ...``: run an unmodified Transformers script with hf-adasam's names and
SAM-aware classes.

Registers the ``optim`` names; points ``transformers.Trainer`` / ``Seq2SeqTrainer`` at the SAM-aware
subclasses and ``transformers.TrainingArguments`` / ``Seq2SeqTrainingArguments`` at the ones with the
``sam_*`` fields (the script finds them by ``from transformers import ...``), so ``--optim_args`` is
checked while the command line is parsed and the script's ``--help`` lists the SAM keys; then runs the
script as ``__main__`` with its own arguments and the ``sys.path`` that ``python script.py`` gives it.
"""

from __future__ import annotations

import os
import runpy
import sys

__all__ = ["main", "patch_transformers", "usage"]

EXAMPLES = """\
examples:
  python -m hf_adasam run_glue.py --model_name_or_path bert-base-cased --task_name mrpc --do_train \\
      --output_dir out --optim adasam --optim_args "rho=0.05,policy=ae"
  python -m hf_adasam run_glue.py ... --optim adamw_torch --sam_rho 0.05          # SAM over AdamW
  python -m hf_adasam run_glue.py --help                                          # the script's flags, sam_* too
  torchrun --nproc_per_node 2 -m hf_adasam run_glue.py ... --use_cpu                # DDP on CPU
  accelerate launch -m hf_adasam run_glue.py ...                                  # DDP on GPUs
"""


def usage() -> str:
    """``--help``: what the launcher does, the names with their knobs, every SAM knob with its default, examples."""
    from ..optim_args import format_value
    from ..registry import OPTIMIZERS
    from ..sharpness.config import SAMConfig

    lines = ["usage: python -m hf_adasam path/to/script.py [script arguments ...]", "",
             __doc__.split("\n\n", 1)[1].strip(), "",
             "optim names (--optim NAME; knobs go in --optim_args key=value,... with these defaults):"]
    for e in OPTIMIZERS.values():
        knobs = ", ".join(f"{k}={format_value(v)}" for k, v in e.knobs().items() if k != "impl")
        lines.append(f"  {e.name:<13} {e.cls.__name__}{' + SAM (rho on by default)' if e.sam else ''}: {knobs}")
    lines += ["  ... and every Transformers name (adamw_torch, sgd, adafactor, ...)", "",
              "SAM knobs (--optim_args key=value, or --sam_<key> value where the script's arguments are "
              "TrainingArguments):"]
    for f in SAMConfig.knobs():
        lines.append(f"  {f.name:<18} default {SAMConfig.default_text(f.name)}; allowed {f.metadata['allowed']}")
        lines.append(f"  {'':<18} {f.metadata['help']}")
    return "\n".join([*lines, "", EXAMPLES])


def patch_transformers() -> None:
    """Point Transformers' public names at the SAM-aware classes, for a script that imports them from there."""
    import transformers
    import transformers.trainer
    import transformers.trainer_seq2seq

    from . import SAMSeq2SeqTrainer, SAMSeq2SeqTrainingArguments, SAMTrainer, SAMTrainingArguments, register

    register()
    for module in (transformers, transformers.trainer):
        module.Trainer = SAMTrainer
    for module in (transformers, transformers.trainer_seq2seq):
        module.Seq2SeqTrainer = SAMSeq2SeqTrainer
    transformers.TrainingArguments = SAMTrainingArguments
    transformers.Seq2SeqTrainingArguments = SAMSeq2SeqTrainingArguments


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0 if argv else 2)
    script, *rest = argv
    if not os.path.isfile(script):
        print(f"error: no script {script!r}; usage: python -m hf_adasam path/to/script.py [arguments]", file=sys.stderr)
        sys.exit(2)
    patch_transformers()
    from .arguments import SAMArgumentError

    sys.argv = [script, *rest]
    # as `python script.py`: the script's own folder (symlinks resolved) first on sys.path, in the place of the
    # launcher's working directory; __file__ the path joined to the working directory, not normalised
    sys.path[0] = os.path.dirname(os.path.realpath(script))
    try:
        runpy.run_path(script if os.path.isabs(script) else os.path.join(os.getcwd(), script), run_name="__main__")
    except SAMArgumentError as err:  # a bad --optim_args/--sam_* value: one line and status 2, as argparse does
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank parses the same arguments
            print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
