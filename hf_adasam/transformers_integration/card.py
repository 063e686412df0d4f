"""Model cards that say how a model was trained: the optimizer, every SAM knob, ρ, the policy and the
fraction of second passes, in the text and in the metadata (``hf_adasam`` key, ``model-index`` results).

One writer, one template (``model_card_template.md``, shipped in the package): ``SAMTrainer.create_model_card``
(what ``push_to_hub`` and unmodified scripts call) extends Transformers' own card with it, and the
recipes, which know the task and the dev metrics, render the whole card from it (:class:`CardInfo`).
Every card is loaded back with ``huggingface_hub.ModelCard`` and its metrics checked to round-trip.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

__all__ = ["TEMPLATE", "CardInfo", "training_settings", "write_card"]

TEMPLATE = Path(__file__).with_name("model_card_template.md")
_NOT_METRICS = ("runtime", "samples_per_second", "steps_per_second", "epoch")


@dataclasses.dataclass
class CardInfo:
    """What a recipe knows beyond the Trainer: the task, the data and the dev metrics."""

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


def hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}× {torch.cuda.get_device_name(0)}"
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def training_settings(trainer: Any) -> dict[str, Any]:
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
        "optimizer_param_group": {k: _plain(v) for k, v in group.items()},
    }
    sam = trainer.sam_config.as_dict()
    step = getattr(trainer, "sam", None)
    if step is not None:
        done = step.stats.total_micro_batches
        sam["second_pass_fraction"] = step.stats.total_second_passes / done if done else None
        total = getattr(getattr(step.policy, "trigger", step.policy), "total_steps", None)
        if total is not None:
            sam["ae_total_steps"] = total
    elif trainer.sam_config.on:
        sam["second_pass_fraction"] = None
    out["sam"] = sam
    return out


def _eval_metrics(trainer: Any) -> dict[str, float]:
    """The last evaluation's metrics in the Trainer's log history (no ``eval_`` prefix, no timings)."""
    for entry in reversed(trainer.state.log_history):
        found = {k[5:]: float(v) for k, v in entry.items() if k.startswith("eval_") and isinstance(v, (int, float))
                 and not k.endswith(_NOT_METRICS)}
        if found:
            return found
    return {}


def write_card(path: str | os.PathLike, trainer: Any, info: CardInfo | None = None, *,
               tasks: Any = None, dataset: Any = None, **_: Any) -> Path:
    """Write the card at ``path``: from ``info`` (recipes), else around the card already there (Transformers').

    Its metrics must parse back through ``ModelCard.load(...).data.eval_results``, or this raises.
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    path = Path(path)
    settings = training_settings(trainer)
    base = ModelCard.load(path) if info is None and path.is_file() else None
    data = base.data if base is not None else ModelCardData(library_name="transformers")
    metrics = info.metrics if info is not None else _eval_metrics(trainer)
    if info is not None:
        data.model_name, data.base_model, data.datasets = info.model_name, info.base_model, [info.dataset_id]
        data.metrics, data.pipeline_tag = sorted(metrics), info.task_type
    if metrics and not (data.eval_results or []):
        task = info.task_type if info else (tasks[0] if isinstance(tasks, list) else tasks) or "other"
        ds = info.dataset_id if info else (dataset[0] if isinstance(dataset, list) else dataset) or "evaluation set"
        data.model_name = data.model_name or Path(trainer.args.output_dir).name
        data.eval_results = [
            EvalResult(task_type=task, dataset_type=ds, dataset_name=info.task_name if info else ds,
                       dataset_config=info.dataset_config if info else None,
                       dataset_split=info.dataset_split if info else "validation",
                       metric_type=name, metric_name=name, metric_value=float(value))
            for name, value in metrics.items()
        ]
    data.tags = list(dict.fromkeys([*(data.tags or []), "hf-adasam", settings["optim"],
                                    "sharpness-aware" if settings["sam"]["rho"] else "no-sam"]))
    data.hf_adasam = settings
    runtime = info.train_runtime_s if info is not None else next(
        (h["train_runtime"] for h in reversed(trainer.state.log_history) if "train_runtime" in h), None)
    card = ModelCard.from_template(
        data, template_path=str(TEMPLATE), info=info, base_text=base.text.strip() if base is not None else "",
        settings=settings, settings_json=json.dumps(settings, indent=2, default=str), hardware=hardware(),
        runtime=f"{runtime:.0f} s" if runtime else "not trained in this run",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    card.save(path)
    parsed = ModelCard.load(path)  # YAML and model-index parse back into EvalResults
    got = {r.metric_type: r.metric_value for r in parsed.data.eval_results or []}
    want = {k: float(v) for k, v in metrics.items()}
    if metrics and not all(got.get(k) == v for k, v in want.items()):
        raise RuntimeError(f"model card metadata did not round-trip: {got} != {want}")
    return path
