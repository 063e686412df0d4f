"""Model cards that say how a model was trained: the optimizer, every SAM knob, ρ, the policy and the
fraction of second passes, in the text and in the metadata (``hf_adasam`` key, ``model-index`` results).

One writer, one template (``model_card_template.md``, shipped in the package): ``SAMTrainer.create_model_card``
(what ``push_to_hub``, ``save_model`` and unmodified scripts call) extends Transformers' (or TRL's) own card with
it, and the recipes, which know the task and the dev metrics, render the whole card from it (:class:`CardInfo`).

A card is rendered in two steps: :func:`card_inputs` collects everything the card says from the trainer (plain
JSON: metadata, the card it extends, settings, hardware, training time), and :func:`render_card` turns those
inputs into the card's text with the template. ``model_cards/`` keeps the inputs of the reference runs beside
their cards, so a test can re-render them without training. Every card is loaded back with
``huggingface_hub.ModelCard`` and its metrics checked to round-trip.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
from pathlib import Path
from typing import Any

import torch

__all__ = ["TEMPLATE", "CardInfo", "card_inputs", "render_card", "training_settings", "warmup_text", "write_card"]

TEMPLATE = Path(__file__).with_name("model_card_template.md")
SECTION = "Optimizer and sharpness-aware training (hf-adasam)"  # the template's heading
_NOT_METRICS = ("runtime", "samples_per_second", "steps_per_second", "epoch")
# Transformers' card lists "- optimizer: Use OptimizerNames.X and the args are:\n<optim_args>" (its guess at the
# optimizer, from TrainingArguments' Adam fields); our section describes the optimizer, so that item points there
_TRANSFORMERS_OPTIMIZER_ITEM = re.compile(r"^- optimizer: Use .*?(?=\n- |\n\n|\n#|\Z)", re.MULTILINE | re.DOTALL)
# what the card we extend may have said that is not ours to regenerate
_OURS = ("hf_adasam", "model-index", "eval_results")


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
    command: str
    train_runtime_s: float | None = None  # only for a trainer without hf-adasam's TrainingClock (which sums resumes)


def hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}× {torch.cuda.get_device_name(0)}"
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _configured_group(group: dict[str, Any]) -> dict[str, Any]:
    """A param group as configured: its ``lr`` is the schedule's start (``initial_lr``, which every torch
    scheduler records), not the value the schedule has reached (0.0 at the end of a linear decay)."""
    out = {k: _plain(v) for k, v in group.items() if k not in ("params", "initial_lr")}
    if "initial_lr" in group:
        out["lr"] = group["initial_lr"]
    return out


def training_settings(trainer: Any) -> dict[str, Any]:
    """Every optimizer and SAM hyperparameter of the run, as the card lists them."""
    args = trainer.args
    opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
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
        "optimizer_param_group": _configured_group(opt.param_groups[0]) if opt else {},
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


def warmup_text(args: Any, total_steps: int | None = None) -> str:
    """``args.warmup_steps`` in words (``TrainingArguments`` reads a value below 1 as a fraction of the steps), with
    the number of steps it came to when ``total_steps`` is known."""
    steps = args.warmup_steps
    if not steps:
        return "no warm-up"
    if steps < 1:
        of = f" ({args.get_warmup_steps(total_steps)} of {total_steps})" if total_steps else ""
        return f"warm-up {steps * 100:g}% of the steps{of}"
    return f"warm-up {int(steps)} steps"


def _eval_metrics(trainer: Any) -> dict[str, float]:
    """The last evaluation's metrics in the Trainer's log history (no ``eval_`` prefix, no timings)."""
    for entry in reversed(trainer.state.log_history):
        found = {k[5:]: float(v) for k, v in entry.items() if k.startswith("eval_") and isinstance(v, (int, float))
                 and not k.endswith(_NOT_METRICS)}
        if found:
            return found
    return {}


def _json(value: Any) -> Any:
    """``value`` as plain JSON (what ``model_cards/`` records), so a card renders the same from its recorded inputs."""
    return json.loads(json.dumps(value, default=str))


def card_inputs(trainer: Any, info: CardInfo | None = None, *, base: Any = None, prior: Any = None,
                tasks: Any = None, dataset: Any = None) -> dict[str, Any]:
    """Everything the card says, as plain JSON: its metadata, the text of the card it extends (``base``: the
    ``ModelCard`` Transformers or TRL just wrote, or None), the settings, the hardware and the training time.

    ``prior``: the ``ModelCard`` that was in the output folder before (e.g. PEFT's adapter card from
    ``save_model``); its tags, ``library_name`` and other metadata the new card lacks are kept.
    """
    from huggingface_hub import EvalResult, ModelCardData

    settings = _json(training_settings(trainer))
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
    before = prior.data.to_dict() if prior is not None else {}
    if before.get("library_name"):  # e.g. PEFT's "peft": the card is an adapter's, whoever wrote the text
        data.library_name = before["library_name"]
    for key, value in before.items():
        if key not in _OURS and data.get(key) is None:
            data[key] = value
    data.tags = list(dict.fromkeys([*(before.get("tags") or []), *(data.tags or []), "hf-adasam", settings["optim"],
                                    "sharpness-aware" if settings["sam"]["rho"] else "no-sam"]))
    data.hf_adasam = settings
    seconds, runs = _training_time(trainer, info)
    base_text = base.text.strip() if base is not None else ""
    return _json({
        "card_data": data.to_dict(),
        "base_text": _TRANSFORMERS_OPTIMIZER_ITEM.sub(f'- optimizer: see "{SECTION}" below', base_text),
        "info": dataclasses.asdict(info) if info is not None else None,
        "model_name": data.model_name or Path(trainer.args.output_dir).name,
        "settings": settings,
        "warmup": warmup_text(trainer.args, trainer.state.max_steps or None),
        "hardware": hardware(),
        "training_seconds": seconds,
        "training_runs": runs,
    })


def _training_time(trainer: Any, info: CardInfo | None = None) -> tuple[float | None, int]:
    """(seconds, runs): the training time summed over the runs of a resumed training (None: not trained), from the
    trainer's :class:`~.trainer.TrainingClock`; without one, the recipe's figure or this run's ``train_runtime``."""
    clock = getattr(trainer, "training_clock", None)
    if clock is not None:
        return clock.total_seconds(), clock.runs
    if info is not None and info.train_runtime_s is not None:
        return info.train_runtime_s, 1
    runtime = next((h["train_runtime"] for h in reversed(trainer.state.log_history) if "train_runtime" in h), None)
    return runtime, 1


def _runtime_text(seconds: float | None, runs: int) -> str:
    if not seconds:
        return "not trained in this run"
    text = f"{seconds:.0f} s"
    return f"{text} (summed over {runs} runs: resumed from checkpoints)" if runs > 1 else text


def render_card(inputs: dict[str, Any]) -> str:
    """The card's text (YAML metadata and markdown) from :func:`card_inputs`' result, by the packaged template."""
    from huggingface_hub import ModelCard, ModelCardData

    card = ModelCard.from_template(
        ModelCardData(**inputs["card_data"]), template_path=str(TEMPLATE), info=inputs["info"],
        base_text=inputs["base_text"], model_name=inputs["model_name"], settings=inputs["settings"],
        settings_json=json.dumps(inputs["settings"], indent=2), warmup=inputs["warmup"], hardware=inputs["hardware"],
        runtime=_runtime_text(inputs["training_seconds"], inputs["training_runs"]), section=SECTION,
    )
    return str(card)


def write_card(path: str | os.PathLike, trainer: Any, info: CardInfo | None = None, *, prior: Any = None,
               tasks: Any = None, dataset: Any = None, **_: Any) -> Path:
    """Write the card at ``path``: from ``info`` (recipes), else around the card already there (Transformers').

    Its metrics must parse back through ``ModelCard.load(...).data.eval_results``, or this raises.
    """
    from huggingface_hub import ModelCard

    path = Path(path)
    base = ModelCard.load(path) if info is None and path.is_file() else None
    inputs = card_inputs(trainer, info, base=base, prior=prior, tasks=tasks, dataset=dataset)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_card(inputs), encoding="utf-8")
    record = os.environ.get("HF_ADASAM_CARD_INPUTS")  # model_cards/regenerate.py: keep what the card came from
    if record:
        Path(record).write_text(json.dumps(inputs, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    parsed = ModelCard.load(path)  # YAML and model-index parse back into EvalResults
    got = {r.metric_type: r.metric_value for r in parsed.data.eval_results or []}
    want = {k: float(v) for k, v in (info.metrics if info is not None else _eval_metrics(trainer)).items()}
    if want and not all(got.get(k) == v for k, v in want.items()):
        raise RuntimeError(f"model card metadata did not round-trip: {got} != {want}")
    return path
