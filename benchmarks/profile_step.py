"""Where the time of one ``optimizer.step()`` goes: a torch.profiler breakdown per optimizer.

For every hf-adasam optimizer (each misses the 1.3×-own-floor goal in ``optim_step``): the same BERT-shaped
parameters, the compiled kernel with inductor's per-kernel profiling on (each generated C++ loop is
a profiler event), ``--steps`` profiled steps after warm-up. Each optimizer's table lists the events
that take the most self time per step, so it shows whether a step is spent in its fused loops (and in
which: e.g. SET-Adam's reduction loop and its update loop) or outside them (dispatch, Python, eager ops).

    python benchmarks/profile_step.py                     # writes benchmarks/results/profile_step_22m.{json,md}
    python benchmarks/profile_step.py --names set_adam --top 8
"""

from __future__ import annotations

import argparse
import json
import platform

import torch
import torch._inductor.config as inductor_config
from optim_step import RESULTS, TRAFFIC, WARMUP, Problem, copy_bandwidth, make_ours
from torch.profiler import ProfilerActivity, profile

import hf_adasam


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["22m", "110m"], default="22m")
    ap.add_argument("--names", default=",".join(hf_adasam.OPTIMIZERS))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=WARMUP)
    ap.add_argument("--top", type=int, default=6)
    a = ap.parse_args()
    inductor_config.cpp.enable_kernel_profile = True  # one profiler event per generated C++ kernel

    prob = Problem(a.size)
    shapes, numel = prob.shapes, prob.numel
    bandwidth = copy_bandwidth()

    makers = {"AdamW fused": (lambda: torch.optim.AdamW(prob.groups(), lr=1e-3, fused=True), TRAFFIC["adamw"])}
    for name in a.names.split(","):
        makers[f"{name} compiled"] = (lambda n=name: make_ours(n, "compiled", prob.groups()), TRAFFIC[name])
    report = []
    lines = [f"# Profile of optimizer.step() on {numel / 1e6:.1f}M params ({len(shapes)} tensors), "
             f"{torch.get_num_threads()} threads, torch {torch.__version__}; copy bandwidth "
             f"{bandwidth / 1e9:.1f} GB/s; {a.steps} profiled steps", "",
             "Self time per step of the costliest profiler events. `cpp_fused_*` are inductor's generated loops "
             "(one per fused group of element-wise ops and reductions); the floor is the optimizer's fp32 arrays "
             "read + written per element × params × 4 B / the copy bandwidth above.", ""]
    for label, (make, arrays) in makers.items():
        opt = make()
        for _ in range(a.warmup):
            opt.step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(a.steps):
                opt.step()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total_ms = sum(e.self_cpu_time_total for e in events) / 1e3 / a.steps
        floor_ms = arrays * numel * 4 / bandwidth * 1e3
        rows = [{"event": e.key, "ms_per_step": e.self_cpu_time_total / 1e3 / a.steps, "calls_per_step":
                 e.count / a.steps, "share": e.self_cpu_time_total / 1e3 / a.steps / total_ms}
                for e in events[: a.top]]
        report.append({"optimizer": label, "profiled_ms_per_step": total_ms, "floor_ms": floor_ms, "top": rows})
        lines += [f"## {label}: {total_ms:.1f} ms per step profiled (floor {floor_ms:.1f} ms, {arrays} arrays)", "",
                  "| event | ms / step (self) | calls / step | share |", "|---|---:|---:|---:|"]
        lines += [f"| `{r['event'][:90]}` | {r['ms_per_step']:.2f} | {r['calls_per_step']:.0f} | {r['share']:.0%} |"
                  for r in rows]
        lines.append("")
        print(f"{label}: {total_ms:.1f} ms/step", flush=True)
        del opt
    md = "\n".join(lines)
    print(md)
    stem = RESULTS / f"profile_step_{a.size}"
    machine = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "numel": numel, "copy_bandwidth_GBps": bandwidth / 1e9}
    stem.with_suffix(".json").write_text(json.dumps({"machine": machine, "optimizers": report}, indent=2))
    stem.with_suffix(".md").write_text(md)


if __name__ == "__main__":
    main()
