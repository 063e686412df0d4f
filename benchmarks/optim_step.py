"""ms per ``optimizer.step()`` for every hf-adasam optimizer against ``torch.optim.AdamW`` and peers.

All optimizers live in one process over the same BERT-shaped parameter list (MiniLM-L6: 103
tensors, 22.7M parameters, or BERT-base with ``--size 110m``) and are stepped interleaved, so
machine noise hits every row alike. Each row reports the median of ``--steps`` timed steps after
``--warmup`` untimed ones (which include the one-off compile, reported separately).

Besides AdamW (fused, foreach) the rows include ``torch.optim.Adam(amsgrad=True)`` and the
``pytorch_optimizer`` version of a method where one exists (``--peers``; needs the ``bench`` extra).
The run also measures the machine's copy bandwidth, and each row's memory-traffic floor: the fp32
arrays the algorithm must read and write per element per step (``TRAFFIC``) × params × 4 bytes / bandwidth.

    python benchmarks/optim_step.py                  # compiled + foreach rows, 22.7M params
    python benchmarks/optim_step.py --impls foreach  # eager only (no compile wait)
    python benchmarks/optim_step.py --size 110m --impls compiled   # BERT-base, in memory-sized groups

When every row at once would not fit in ``--mem-gb`` (at 110M parameters AdaShift alone holds 12
copies of the model, its own and pytorch_optimizer's 25), the methods are packed into groups that do,
and each group runs in its own process with the AdamW / AMSGrad baselines beside it; every row is
then reported against the AdamW fused of its own process, and a method and its pytorch_optimizer
peer always share a process.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import torch

import hf_adasam
from hf_adasam import create_optimizer

RESULTS = Path(__file__).parent / "results"

# knobs per name where the default would leave the step idle or is not a fair comparison
EXTRA: dict[str, dict] = {"adai": {"lr": 0.1}, "adaiw": {"lr": 0.1}, "cprop_sgd": {"lr": 0.1, "momentum": 0.9}}

# fp32 arrays read + written per element per step by the least-traffic schedule of each algorithm
# (p and g read, p written, each state buffer read and written; two-pass algorithms read again)
TRAFFIC: dict[str, int] = {
    "adamw": 7,  # p r/w, g r, m r/w, v r/w
    "amsgrad": 9,  # + v_max r/w
    "adasam": 9,  # AMSGrad's
    "set_adam": 9,  # pass 1: g, v r (reductions of v_t); pass 2: p r/w, g r, m r/w, v r/w
    "radam": 7,
    "adai": 11,  # pass 1: g r, v r/w (global mean); pass 2: p r/w, g r, m r/w, v r, 1-P_t r/w
    "adaiw": 11,
    "adashift": 8,  # pass 1: max of the leaving gradient; pass 2: p r/w, g r, m r/w, window slot r/w
    "cprop_adam": 11,  # p r/w, g r, m, v, mu, M r/w
    "cprop_sgd": 9,  # p r/w, g r, buffer, mu, M r/w
    "generic_adam": 7,
    # SAM's own tensor work over AdamW: AdamW's 7 + ‖g‖ (g r) + save w (p r, copy w) + w += ρ g/‖g‖ (p r/w, g r)
    # + restore (copy r, p w); the forward/backward passes are not part of an optimizer's step
    "sam": 15,
}
# untimed steps before timing: AdaShift only stores gradients until its window of n = 10 is full, and its
# compiled kernel is specialised (recompiled) for those first steps; timing must start in the steady state
WARMUP = 12
SAM = "sam"  # pseudo-name in --names: the SAM step's tensor work over AdamW fused, ours and pytorch_optimizer's
# the pytorch_optimizer class of the same method, with its knobs for the same algorithm as ours
PEERS: dict[str, tuple[str, dict]] = {
    "radam": ("RAdam", {}),
    "adai": ("Adai", {"lr": 0.1}),
    "adaiw": ("Adai", {"lr": 0.1, "weight_decouple": True}),
    "adashift": ("AdaShift", {}),
}


def copy_bandwidth(numel: int = 64 * 2**20, repeats: int = 20) -> float:
    """Bytes per second of ``a.add_(b)`` on fp32 buffers much larger than the caches: read a and b, write a.

    In place, like an optimizer step. (A plain ``dst.copy_(src)`` also reads every destination line before
    writing it, which the byte count 2 x size would miss, and then the floor comes out above AdamW fused.)
    """
    a, b = torch.randn(numel), torch.randn(numel)
    a.add_(b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a.add_(b)
        times.append(time.perf_counter() - t0)
    return 3 * numel * 4 / statistics.median(times)


def state_arrays(make: Callable[[list[torch.Tensor]], torch.optim.Optimizer]) -> float:
    """Copies of the parameters an optimizer keeps as state, read off a small probe after a dozen steps.

    (A dozen covers AdaShift's window of n = 10 past gradients, which fills one step at a time.)
    """
    p = torch.zeros(16, 16, requires_grad=True)
    opt = make([p])
    for i in range(12):
        p.grad = torch.full_like(p, 1e-3 * (i + 1))
        opt.step()

    def numel(x: object) -> int:
        if isinstance(x, torch.Tensor):
            return x.numel() if x.numel() > 1 else 0  # step counters and scalars are not arrays
        if isinstance(x, (list, tuple, deque)):
            return sum(numel(v) for v in x)
        if isinstance(x, dict):
            return sum(numel(v) for v in x.values())
        return 0

    return sum(numel(st) for st in opt.state.values()) / p.numel()


def bert_shapes(size: str) -> list[tuple[int, ...]]:
    h, layers, inter = {"22m": (384, 6, 1536), "110m": (768, 12, 3072)}[size]
    shapes: list[tuple[int, ...]] = [(30522, h), (512, h), (2, h), (h,), (h,)]
    for _ in range(layers):
        shapes += [(h, h), (h,)] * 4 + [(h,), (h,), (inter, h), (inter,), (h, inter), (h,), (h,), (h,)]
    return [*shapes, (h, h), (h,)]


def make_ours(name: str, impl: str, ps: list | list[dict]) -> torch.optim.Optimizer:
    kw = {**EXTRA.get(name, {}), "impl": impl}  # radam's foreach row is torch's own _multi_tensor_radam
    kw.setdefault("lr", 1e-3)
    return create_optimizer(name, ps, **kw)


def make_peer(name: str, ps: list | list[dict]) -> torch.optim.Optimizer:
    import pytorch_optimizer

    cls_name, kw = PEERS[name]
    return getattr(pytorch_optimizer, cls_name)(ps, **{"lr": 1e-3, **kw})


def plan_groups(args: argparse.Namespace, numel: int) -> list[list[str]]:
    """Pack the methods into groups whose rows (with the baselines) fit in ``--mem-gb``."""
    bytes_per_copy = numel * 4
    baseline = (1 + 2) * 2 + 1  # two AdamW rows: params + m + v each, plus the shared grads
    if args.peers == "true":
        baseline += 1 + 3  # AMSGrad: params + m + v + v_max
    cost = {}
    for name in args.names.split(","):
        if name == SAM:  # params + AdamW's m, v + the saved copy of w, for ours and the peer
            cost[name] = 4.0 * (2 if args.peers == "true" else 1)
            continue
        n_rows = len(args.impls.split(","))
        arrays = n_rows * (1 + state_arrays(lambda ps, n=name: make_ours(n, "foreach", ps)))
        if args.peers == "true" and name in PEERS:
            arrays += 1 + state_arrays(lambda ps, n=name: make_peer(n, ps))
        cost[name] = arrays
    budget = args.mem_gb * 2**30 / bytes_per_copy - baseline
    groups: list[list[str]] = []
    used: list[float] = []
    for name, arrays in cost.items():  # first fit; a method too big for any group gets its own
        i = next((i for i, u in enumerate(used) if u + arrays <= budget), len(groups))
        if i == len(groups):
            groups.append([])
            used.append(0.0)
        groups[i].append(name)
        used[i] += arrays
    return groups


def run_groups(args: argparse.Namespace, groups: list[list[str]]) -> dict:
    """One process per group; rows keep their own process's AdamW fused as reference."""
    merged: dict = {"rows": [], "groups": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i, names in enumerate(groups):
            stem = Path(tmp) / f"group{i}"
            cmd = [sys.executable, __file__, "--size", args.size, "--steps", str(args.steps), "--warmup",
                   str(args.warmup), "--impls", args.impls, "--names", ",".join(names), "--threads",
                   str(args.threads), "--peers", args.peers, "--out", str(stem), "--mem-gb", "inf"]
            print(f"group {i + 1}/{len(groups)}: {', '.join(names)}", flush=True)
            subprocess.run(cmd, check=True)
            res = json.loads(stem.with_suffix(".json").read_text())
            ref = next(r for r in res["rows"] if r["optimizer"] == "AdamW fused")
            merged["groups"].append({"names": names, "adamw_fused_ms": ref["ms_median"],
                                     "copy_bandwidth_GBps": res["machine"]["copy_bandwidth_GBps"]})
            for r in res["rows"]:
                if i == 0 or not r["optimizer"].startswith(("AdamW ", "Adam amsgrad")):
                    merged["rows"].append({**r, "group": i + 1})
            merged["machine"] = res["machine"]
    merged["machine"]["copy_bandwidth_GBps"] = statistics.median(g["copy_bandwidth_GBps"] for g in merged["groups"])
    return merged


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["22m", "110m"], default="22m")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=WARMUP)
    ap.add_argument("--impls", default="compiled,foreach")
    ap.add_argument("--names", default=",".join([*hf_adasam.OPTIMIZERS, SAM]))
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--peers", default="true", choices=["true", "false"],
                    help="also time torch's AMSGrad and pytorch_optimizer's version of each method")
    ap.add_argument("--mem-gb", type=float, default=14.0,
                    help="memory the rows of one process may hold; more rows than fit run in groups")
    ap.add_argument("--out", default=None, help="results stem (default benchmarks/results/optim_step_<size>)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    stem = Path(args.out) if args.out else RESULTS / f"optim_step_{args.size}"
    numel = sum(math.prod(s) for s in bert_shapes(args.size))
    groups = plan_groups(args, numel) if math.isfinite(args.mem_gb) else [args.names.split(",")]
    if len(groups) > 1:
        write(stem, run_groups(args, groups))
        return
    write(stem, measure(args))


class Problem:
    """BERT-shaped parameters with fixed gradients; every optimizer gets its own fresh parameters."""

    def __init__(self, size: str) -> None:
        self.shapes = bert_shapes(size)
        self.gen = torch.Generator().manual_seed(0)
        self.grads = [torch.randn(s, generator=self.gen) * 1e-3 for s in self.shapes]
        self.numel = sum(t.numel() for t in self.grads)

    def params(self) -> list[torch.Tensor]:
        ps = [torch.randn(s, generator=self.gen).requires_grad_() for s in self.shapes]
        self.set_grads(ps)
        return ps

    def set_grads(self, ps: list[torch.Tensor]) -> torch.Tensor:
        """Shared gradients (optimizers must not write into them); as a SAM closure, the backward without a model."""
        for p, gr in zip(ps, self.grads, strict=True):
            p.grad = gr
        return torch.zeros(())

    def groups(self, ps: list[torch.Tensor] | None = None) -> list[dict]:
        """Trainer's layout: matrices decay, vectors (bias, LayerNorm) do not."""
        ps = self.params() if ps is None else ps
        return [{"params": [p for p in ps if p.dim() > 1], "weight_decay": 0.01},
                {"params": [p for p in ps if p.dim() <= 1], "weight_decay": 0.0}]


def sam_steps(prob: Problem, peers: bool) -> dict[str, Callable[[], None]]:
    """SAM's tensor work over AdamW fused, the closure standing in for forward/backward."""
    ps = prob.params()
    ours = hf_adasam.SAM(torch.optim.AdamW(prob.groups(ps), lr=1e-3, fused=True), rho=0.05)

    def ours_step() -> None:
        ours.zero_grad()
        ours.step(lambda: prob.set_grads(ps))

    steps = {"SAM over AdamW fused (hf_adasam.SAM)": ours_step}
    if peers:
        import pytorch_optimizer

        peer_ps = prob.params()
        peer = pytorch_optimizer.SAM(prob.groups(peer_ps), torch.optim.AdamW, rho=0.05, lr=1e-3, fused=True)

        def peer_step() -> None:
            peer.first_step(zero_grad=True)
            prob.set_grads(peer_ps)
            peer.second_step()

        steps["SAM over AdamW fused (pytorch_optimizer.SAM)"] = peer_step
    return steps


def measure(args: argparse.Namespace) -> dict:
    prob = Problem(args.size)
    shapes, numel = prob.shapes, prob.numel
    rows: dict[str, Callable[[], None]] = {}
    compile_s: dict[str, float] = {}
    traffic: dict[str, int] = {}

    def add(label: str, step: Callable[[], None], arrays: int) -> None:
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            step()
        compile_s[label] = time.perf_counter() - t0
        print(f"warm-up {label}: {compile_s[label]:.1f} s", flush=True)
        rows[label], traffic[label] = step, arrays

    add("AdamW fused", torch.optim.AdamW(prob.groups(), lr=1e-3, fused=True).step, TRAFFIC["adamw"])
    add("AdamW foreach", torch.optim.AdamW(prob.groups(), lr=1e-3, foreach=True).step, TRAFFIC["adamw"])
    if args.peers == "true":
        add("Adam amsgrad (torch foreach)",
            torch.optim.Adam(prob.groups(), lr=1e-3, amsgrad=True, foreach=True).step, TRAFFIC["amsgrad"])
    for name in args.names.split(","):
        if name == SAM:
            for label, step in sam_steps(prob, args.peers == "true").items():
                add(label, step, TRAFFIC[SAM])
            continue
        for impl in args.impls.split(","):
            add(f"{name} {impl}", make_ours(name, impl, prob.groups()).step, TRAFFIC[name])
        if args.peers == "true" and name in PEERS:
            add(f"{name} (pytorch_optimizer.{PEERS[name][0]})", make_peer(name, prob.groups()).step, TRAFFIC[name])

    times: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(args.steps):  # interleaved: one step of each per round
        for label, step in rows.items():
            t0 = time.perf_counter()
            step()
            times[label].append(time.perf_counter() - t0)

    bandwidth = copy_bandwidth()
    ref = statistics.median(times["AdamW fused"])
    table = []
    for label, ts in times.items():
        med = statistics.median(ts)
        floor = traffic[label] * numel * 4 / bandwidth
        table.append({"optimizer": label, "ms_median": med * 1e3, "vs_adamw_fused": med / ref,
                      "arrays_per_element": traffic[label], "floor_ms": floor * 1e3, "vs_floor": med / floor,
                      "ms_p10": sorted(ts)[len(ts) // 10] * 1e3, "ms_p90": sorted(ts)[9 * len(ts) // 10] * 1e3,
                      "warmup_s": compile_s[label]})
    machine = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "python": platform.python_version(), "numel": numel,
               "tensors": len(shapes), "steps": args.steps, "warmup": args.warmup,
               "copy_bandwidth_GBps": bandwidth / 1e9}
    return {"machine": machine, "rows": table}


def write(stem: Path, result: dict) -> None:
    machine, table, groups = result["machine"], result["rows"], result.get("groups")
    lines = [f"# optimizer.step() on {machine['numel'] / 1e6:.1f}M params ({machine['tensors']} tensors), "
             f"{machine['threads']} threads, torch {machine['torch']}; copy bandwidth "
             f"{machine['copy_bandwidth_GBps']:.1f} GB/s", ""]
    if groups:
        lines += [f"Rows ran in {len(groups)} processes (memory); each is against its own process's AdamW fused:",
                  ""]
        lines += [f"- group {i + 1}: {', '.join(g['names'])} — AdamW fused {g['adamw_fused_ms']:.1f} ms, "
                  f"copy bandwidth {g['copy_bandwidth_GBps']:.1f} GB/s" for i, g in enumerate(groups)]
        lines.append("")
    group_col = " group |" if groups else ""
    lines += ["| optimizer | ms / step (median) | p10–p90 | × AdamW fused | arrays r+w | floor ms | × floor | "
              "warm-up s (incl. compile) |" + group_col,
              "|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if groups else "")]
    for r in table:
        lines.append(f"| {r['optimizer']} | {r['ms_median']:.1f} | {r['ms_p10']:.1f}–{r['ms_p90']:.1f} | "
                     f"{r['vs_adamw_fused']:.2f} | {r['arrays_per_element']} | {r['floor_ms']:.1f} | "
                     f"{r['vs_floor']:.2f} | {r['warmup_s']:.1f} |" + (f" {r['group']} |" if groups else ""))
    md = "\n".join(lines)
    print(md)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    stem.with_suffix(".md").write_text(md + "\n")


if __name__ == "__main__":
    main()
