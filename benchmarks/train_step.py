"""Seconds per optimizer step of ``SAMTrainer`` for plain AdamW and each sharpness-aware set-up.

One process, one small BERT (random init, from a config), the same data; every row trains the same
model copy for ``--steps`` optimizer steps after ``--warmup`` ones and reports the wall time of a step
(``on_step_begin`` to ``on_step_end``: forward, backward(s), perturbation, clipping, optimizer step),
mean and median, as ratios to plain AdamW (the mean is the cost of a policy that mixes one- and
two-pass steps; its median is that of the commoner kind), with the fraction of micro-batches that
paid the second pass. "SAM ops" is the part of the SAM overhead that is not the extra
forward/backward: time inside the SAM step's own tensor work (gradient norm, perturb, bit-exact
restore, LookSAM's g_v), per step.

Two rows are not hf-adasam set-ups but yardsticks for it: "two passes, no perturbation" runs the
plain step's forward/backward twice and nothing else (the floor any two-pass SAM step sits on), and
"pytorch_optimizer SAM over AdamW" is that package's SAM (its defaults) driven from ``Trainer``:
pass 1, ``first_step``, pass 2, and Trainer's ``optimizer.step()`` as its ``second_step``.
Rows run round-robin ``--rounds`` times and pool their steps, so slow drift of the machine is shared.

    python benchmarks/train_step.py                 # writes benchmarks/results/train_step_cpu.{json,md}
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback

from hf_adasam import SAMTrainer, SAMTrainingArguments

RESULTS = Path(__file__).parent / "results"


class TwoPassTrainer(Trainer):
    """Yardstick: the plain step with its forward/backward run twice at the same weights, nothing more."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, dict(inputs), num_items_in_batch)
        super().training_step(model, dict(inputs), num_items_in_batch)
        return loss


class PeerSAMTrainer(Trainer):
    """Yardstick: ``pytorch_optimizer.SAM`` over AdamW as its docs drive it, inside ``Trainer``."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, dict(inputs), num_items_in_batch)
        getattr(self.optimizer, "optimizer", self.optimizer).first_step(zero_grad=True)
        super().training_step(model, dict(inputs), num_items_in_batch)
        return loss  # Trainer clips, then optimizer.step() = second_step: restore w, AdamW step


def peer_sam(lr: float) -> tuple[type, dict]:
    from pytorch_optimizer import SAM

    class TrainerDrivenSAM(SAM):
        def step(self, closure=None):
            self.second_step()

    return TrainerDrivenSAM, {"base_optimizer": torch.optim.AdamW, "rho": 0.05, "lr": lr}


TWO_PASS = "two passes, no perturbation (yardstick)"
ROWS: dict[str, dict] = {
    "adamw (plain)": {"optim": "adamw_torch"},
    TWO_PASS: {"optim": "adamw_torch", "trainer": TwoPassTrainer},
    "pytorch_optimizer SAM over AdamW (yardstick)": {"optim": "adamw_torch", "trainer": PeerSAMTrainer},
    "SAM over AdamW": {"optim": "adamw_torch", "sam_rho": 0.05},
    "ASAM over AdamW": {"optim": "adamw_torch", "sam_rho": 0.5, "sam_adaptive": True},
    "adasam": {"optim": "adasam"},
    "AE-SAM (adasam)": {"optim": "adasam", "sam_policy": "ae"},
    "LookSAM k=5 (adasam)": {"optim": "adasam", "sam_policy": "looksam"},
    "AE-LookSAM (adasam)": {"optim": "adasam", "sam_policy": "ae_looksam"},
}
SAM_ROWS = [label for label, row in ROWS.items() if "trainer" not in row and label != "adamw (plain)"]


class StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self.t0 = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self.t0)


class SAMOpsTimer(TrainerCallback):
    """Wall time spent in the SAM step's own work (norms, perturb, restore, policy), outside forward/backward."""

    def __init__(self) -> None:
        self.total = 0.0
        self.trainer: SAMTrainer | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        sam = self.trainer.sam if self.trainer is not None else None
        if sam is None:
            return
        for obj, name in ((sam.perturbation, "grad_norm"), (sam.perturbation, "perturb"), (sam.perturbation, "restore"),
                          (sam.policy, "after_sam"), (sam.policy, "reuse")):
            setattr(obj, name, self._timed(getattr(obj, name)))

    def _timed(self, fn):
        def run(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.total += time.perf_counter() - t0

        return run


class Data(torch.utils.data.Dataset):
    def __init__(self, n: int, seq: int, vocab: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, vocab, (n, seq), generator=g)
        self.labels = (self.ids[:, 0] > vocab // 2).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3, help="round-robin repeats of every row (steps pooled)")
    ap.add_argument("--out", default=str(RESULTS / "train_step_cpu"))
    a = ap.parse_args()
    cfg = BertConfig(vocab_size=8000, hidden_size=a.hidden, num_hidden_layers=a.layers, num_attention_heads=4,
                     intermediate_size=4 * a.hidden, max_position_embeddings=a.seq, num_labels=2)
    torch.manual_seed(0)
    init = BertForSequenceClassification(cfg).state_dict()
    data = Data(a.batch * (a.steps + a.warmup), a.seq, cfg.vocab_size)
    times: dict[str, list[float]] = {label: [] for label in ROWS}
    ops_s: dict[str, float] = dict.fromkeys(ROWS, 0.0)
    second: dict[str, list[int]] = {label: [0, 0] for label in ROWS}
    # the first training run in a process pays one-off costs (thread pools, allocator growth, the
    # inductor cache): run plain AdamW once untimed so the baseline row is not inflated by them
    plan = [("warm-up", ROWS["adamw (plain)"])] + [item for _ in range(a.rounds) for item in ROWS.items()]
    for label, row in plan:
        kw = {k: v for k, v in row.items() if k != "trainer"}
        trainer_cls = row.get("trainer", SAMTrainer)
        model = BertForSequenceClassification(cfg)
        model.load_state_dict(init)
        ops = SAMOpsTimer()
        timer = StepTimer()
        args = SAMTrainingArguments(
            output_dir="/tmp/hf_adasam_train_step", per_device_train_batch_size=a.batch,
            max_steps=a.steps + a.warmup, learning_rate=1e-4, save_strategy="no", report_to=[], use_cpu=True,
            seed=0, disable_tqdm=True, logging_steps=10_000, **kw)
        extra = {"optimizer_cls_and_kwargs": peer_sam(args.learning_rate)} if trainer_cls is PeerSAMTrainer else {}
        trainer = trainer_cls(model=model, args=args, train_dataset=data, callbacks=[timer, ops], **extra)
        ops.trainer = trainer if isinstance(trainer, SAMTrainer) else None
        trainer.train()
        if label == "warm-up":
            continue
        times[label] += timer.times[a.warmup:]
        ops_s[label] += ops.total / len(timer.times) / a.rounds
        sam = getattr(trainer, "sam", None)
        if sam is not None:
            second[label][0] += sam.stats.total_second_passes
            second[label][1] += sam.stats.total_micro_batches
        elif trainer_cls in (TwoPassTrainer, PeerSAMTrainer):
            second[label] = [1, 1]  # the yardsticks always pay two passes
        print(f"{label}: {statistics.fmean(timer.times[a.warmup:]) * 1e3:.1f} ms/step mean", flush=True)
    table = []
    plain_med, plain_mean = statistics.median(times["adamw (plain)"]), statistics.fmean(times["adamw (plain)"])
    for label, ts in times.items():
        med, mean = statistics.median(ts), statistics.fmean(ts)  # mean: the cost of a policy mixing step kinds
        frac = second[label][0] / second[label][1] if second[label][1] else 0.0
        table.append({"setup": label, "s_per_step": med, "ratio": med / plain_med, "s_per_step_mean": mean,
                      "ratio_mean": mean / plain_mean, "second_pass_fraction": frac,
                      "sam_ops_s_per_step": ops_s[label], "steps_timed": len(ts),
                      "p10": sorted(ts)[len(ts) // 10], "p90": sorted(ts)[9 * len(ts) // 10]})
    nparams = sum(v.numel() for v in init.values())
    machine = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "params": nparams, "batch": a.batch, "seq": a.seq, "steps": a.steps,
               "warmup": a.warmup, "rounds": a.rounds}
    lines = [f"# SAMTrainer s/step, BERT {a.layers}x{a.hidden} ({nparams / 1e6:.1f}M params), batch {a.batch}, "
             f"seq {a.seq}, {machine['threads']} CPU threads, torch {torch.__version__}; {a.steps} steps after "
             f"{a.warmup} warm-up, {a.rounds} rounds pooled", "",
             "| set-up | ms / step (mean) | × plain (mean) | ms / step (median) | × plain (median) | p10–p90 ms | "
             "second-pass fraction | SAM ops ms / step |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in table:
        lines.append(f"| {r['setup']} | {r['s_per_step_mean'] * 1e3:.1f} | {r['ratio_mean']:.2f} | "
                     f"{r['s_per_step'] * 1e3:.1f} | {r['ratio']:.2f} | {r['p10'] * 1e3:.0f}–{r['p90'] * 1e3:.0f} | "
                     f"{r['second_pass_fraction']:.2f} | {r['sam_ops_s_per_step'] * 1e3:.1f} |")
    # where a two-pass step's extra time goes: the second forward/backward (the yardstick's extra over
    # plain), the SAM step's own tensor work (timed inside it), and the rest (Python, allocation, noise)
    by = {r["setup"]: r for r in table}
    plain, floor = by["adamw (plain)"]["s_per_step_mean"], by[TWO_PASS]["s_per_step_mean"]
    lines += ["", "Where the extra time of an always-two-pass step goes (means, ms per step):", "",
              "| set-up | extra over plain | second forward/backward | SAM ops | rest |", "|---|---:|---:|---:|---:|"]
    for r in table:
        if r["second_pass_fraction"] == 1.0 and r["setup"] != TWO_PASS:
            extra, ops = r["s_per_step_mean"] - plain, r["sam_ops_s_per_step"]
            ops_cell = f"{ops * 1e3:.1f}" if r["setup"] in SAM_ROWS else "(in rest)"  # not timed inside the peer
            lines.append(f"| {r['setup']} | {extra * 1e3:.1f} | {(floor - plain) * 1e3:.1f} | {ops_cell} | "
                         f"{(extra - (floor - plain) - ops) * 1e3:.1f} |")
    md = "\n".join(lines)
    print(md)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"machine": machine, "rows": table}, indent=2))
    out.with_suffix(".md").write_text(md + "\n")


if __name__ == "__main__":
    main()
