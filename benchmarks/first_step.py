"""Seconds to the end of the first ``optimizer.step()`` with a cold compile cache, per optimizer and model shape.

Each measurement is a fresh process with its own empty inductor cache directory (``TORCHINDUCTOR_CACHE_DIR``),
as on a new CI machine, cluster node or container: it builds the parameter list (random weights and gradients),
the optimizer with its default kernel (``compiled``), and times the first ``step()`` — compiling included.
Shapes: MiniLM-L6 (22.7M parameters, 103 tensors), BERT-base (110M, 201 tensors) and a decoder-shaped list of
~300 tensors at reduced width (32 layers of hidden 256), to show whether the time grows with the number of
tensors. ``--warm`` adds, for the first shape, a second process that reuses the cache the first one filled.

    python benchmarks/first_step.py                 # writes benchmarks/results/first_step.{json,md}
    python benchmarks/first_step.py --names adasam --shapes 22m
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
SHAPES = ("22m", "110m", "decoder")


def shapes_of(kind: str) -> list[tuple[int, ...]]:
    """Parameter shapes: BERT's (from optim_step.py) or a LLaMA-like decoder at hidden 256."""
    if kind != "decoder":
        sys.path.insert(0, str(Path(__file__).parent))
        from optim_step import bert_shapes

        return bert_shapes(kind)
    h, inter, vocab = 256, 688, 32000
    layer = [(h, h)] * 4 + [(h,), (inter, h), (inter, h), (h, inter), (h,)]  # q k v o, norm, gate up down, norm
    return [(vocab, h), *layer * 32, (h,), (vocab, h)]


def child(name: str, kind: str) -> None:
    """One measurement (run in a fresh process): build, then time the first step; print one JSON line."""
    import torch

    import hf_adasam

    torch.manual_seed(0)
    params = [torch.randn(s) * 0.02 for s in shapes_of(kind)]
    for p in params:
        p.requires_grad_(True)
        p.grad = torch.randn_like(p) * 1e-3
    if name == "adamw_fused":
        opt = torch.optim.AdamW(params, lr=1e-3, fused=True)
    else:
        opt = hf_adasam.create_optimizer(name, params, lr=1e-3)
    t0 = time.perf_counter()
    opt.step()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    opt.step()
    second = time.perf_counter() - t0
    print(json.dumps({"first_s": first, "second_s": second, "tensors": len(params),
                      "numel": sum(p.numel() for p in params)}))


def measure(name: str, kind: str, cache: str, timeout: float) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "HF_HUB_OFFLINE": "1"}
    env.pop("HF_ADASAM_IMPL", None)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--child", name, kind], env=env, capture_output=True, text=True,
                         timeout=timeout)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"{name} {kind} failed:\n{out.stderr[-3000:]}")
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "process_s": wall}


def main() -> None:
    import torch

    import hf_adasam
    from hf_adasam.optim._base import COLD_COMPILE_ESTIMATE

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--names", default=",".join(["adamw_fused", *hf_adasam.OPTIMIZERS]))
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--warm", default="true", choices=["true", "false"])
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per measurement")
    ap.add_argument("--out", default=str(RESULTS / "first_step"))
    ap.add_argument("--child", nargs=2, metavar=("NAME", "SHAPE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    rows = []
    kinds = args.shapes.split(",")
    for name in args.names.split(","):
        row: dict = {"optimizer": name}
        for kind in kinds:
            with tempfile.TemporaryDirectory() as cache:
                r = measure(name, kind, cache, args.timeout)
                row[kind] = r
                if args.warm == "true" and kind == kinds[0]:
                    row["warm"] = measure(name, kind, cache, args.timeout)
            print(f"{name:14s} {kind:8s} {r['tensors']:4d} tensors: first step {r['first_s']:6.1f} s "
                  f"(second {r['second_s'] * 1e3:.0f} ms)", flush=True)
        rows.append(row)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
               "announced_estimate": COLD_COMPILE_ESTIMATE}
    write(Path(args.out), {"machine": machine, "shapes": kinds, "rows": rows})


def write(stem: Path, result: dict) -> None:
    machine, kinds, rows = result["machine"], result["shapes"], result["rows"]
    sizes = {k: next(r[k] for r in rows if k in r) for k in kinds}
    head = " | ".join(f"{k}: {sizes[k]['numel'] / 1e6:.1f}M, {sizes[k]['tensors']} tensors" for k in kinds)
    warm = any("warm" in r for r in rows)
    lines = [f"# First optimizer.step() with a cold inductor cache (s), {machine['cores']} cores, {machine['threads']} "
             f"threads, torch {machine['torch']}", "",
             f"Each cell: a fresh process with an empty cache directory; the default (compiled) kernels. {head}. "
             f"The start-up log line announces {machine['announced_estimate']}.", "",
             "| optimizer | " + " | ".join(f"{k} cold s" for k in kinds)
             + (f" | {kinds[0]} warm cache s" if warm else "") + " | worst cold s |",
             "|---|" + "---:|" * (len(kinds) + (2 if warm else 1))]
    for r in rows:
        cold = [r[k]["first_s"] for k in kinds]
        cells = [f"{c:.1f}" for c in cold] + ([f"{r['warm']['first_s']:.1f}"] if warm else [])
        lines.append(f"| {r['optimizer']} | " + " | ".join(cells) + f" | {max(cold):.1f} |")
    worst = max(max(r[k]["first_s"] for k in kinds) for r in rows if r["optimizer"] != "adamw_fused")
    lines += ["", f"Worst cold first step over hf-adasam's optimizers: {worst:.1f} s "
              f"({'within' if worst <= 10 else 'above'} the 10 s goal)."]
    md = "\n".join(lines)
    print(md)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    stem.with_suffix(".md").write_text(md + "\n")


if __name__ == "__main__":
    main()
