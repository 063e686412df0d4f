"""Seconds to the end of the first ``optimizer.step()`` with a cold compile cache, per optimizer and model shape.

Each measurement is a fresh process with its own empty inductor cache directory (``TORCHINDUCTOR_CACHE_DIR``),
as on a new CI machine, cluster node or container: it builds the parameter list (random weights and gradients),
the optimizer with its default kernel (``compiled``), and times the first ``step()`` — compiling included.
Shapes: MiniLM-L6 (22.7M parameters, 103 tensors), BERT-base (110M, 201 tensors) and a decoder-shaped list of
~300 tensors at reduced width (32 layers of hidden 256), to show whether the time grows with the number of
tensors. ``--warm`` adds, for the first shape, a second process that reuses the cache the first one filled.
Each cell also gets the same first step with ``HF_ADASAM_IMPL=foreach`` (nothing compiled): what the step costs
without compiling, mostly creating the optimizer's state (AdaShift's window of 10 gradients: 12 copies of the
model), so that the compile's share is the difference.

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


def measure(name: str, kind: str, cache: str, timeout: float, impl: str = "compiled") -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "HF_HUB_OFFLINE": "1", "HF_ADASAM_IMPL": impl}
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
            if name != "adamw_fused":
                with tempfile.TemporaryDirectory() as cache:
                    row[f"{kind}_foreach"] = measure(name, kind, cache, args.timeout, "foreach")
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
             "Each cell: compiled first step (the same step with nothing compiled, `HF_ADASAM_IMPL=foreach`: state "
             "creation and the step itself), seconds.", "",
             "| optimizer | " + " | ".join(f"{k} cold s" for k in kinds)
             + (f" | {kinds[0]} warm cache s" if warm else "") + " | worst cold s | worst cold − foreach s |",
             "|---|" + "---:|" * (len(kinds) + (3 if warm else 2))]
    for r in rows:
        cold = [r[k]["first_s"] for k in kinds]
        eager = [r[f"{k}_foreach"]["first_s"] if f"{k}_foreach" in r else 0.0 for k in kinds]
        cells = [f"{c:.1f}" + (f" ({e:.1f})" if f"{k}_foreach" in r else "")
                 for c, e, k in zip(cold, eager, kinds, strict=True)]
        cells += [f"{r['warm']['first_s']:.1f}"] if warm else []
        compile_share = max(c - e for c, e in zip(cold, eager, strict=True))
        lines.append(f"| {r['optimizer']} | " + " | ".join(cells) + f" | {max(cold):.1f} | {compile_share:.1f} |")
    ours = [r for r in rows if r["optimizer"] != "adamw_fused"]
    worst = max(max(r[k]["first_s"] for k in kinds) for r in ours)
    worst_compile = max(max(r[k]["first_s"] - r[f"{k}_foreach"]["first_s"] for k in kinds) for r in ours)
    lines += ["", f"Worst cold first step over hf-adasam's optimizers: {worst:.1f} s "
              f"({'within' if worst <= 10 else 'above'} the 10 s goal); worst compiling share (cold minus the same "
              f"step uncompiled): {worst_compile:.1f} s."]
    md = "\n".join(lines)
    print(md)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    stem.with_suffix(".md").write_text(md + "\n")


if __name__ == "__main__":
    main()
