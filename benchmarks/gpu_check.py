"""The GPU check, one command: on a CUDA machine, within a time budget (default 8 minutes),

1. ``net``: the differential net's deviation table on the GPU — every optimizer variant in every impl
   (single, foreach, compiled: Triton) and parameter dtype against the float64 single-tensor path on the CPU
   (``tests/_kernel_net.py``'s ``measure``), as JSON/Markdown;
2. ``tests``: pytest on the GPU for what only a GPU runs: ``HF_ADASAM_NET_DEVICE=cuda`` and the net's bfloat16 /
   float16 cases (every impl, compiled included, with the net's bounds), fp16 with a GradScaler and bf16
   autocast through ``SAMTrainer`` (``tests/test_sam_integrations.py``, ``tests/test_sam_trainer.py``);
3. ``optim_step``: ``benchmarks/optim_step.py`` at 22m and 110m in bf16 and fp16 on CUDA (compiled kernels,
   fewer steps), with its per-row state bytes and peak memory, and at the LoRA-7B shapes (448 tensors) in bf16
   with SAM's tensor work too: its calls column counts, with the CUDA profiler, the kernels each step launches
   (the compiled kernels make a constant number whatever the tensors: the thing to check on a GPU);
4. ``train_step``: ``benchmarks/train_step.py`` with Trainer's ``bf16`` and ``fp16`` mixed precision on CUDA;
5. ``fsdp``: ``benchmarks/gpu_check_fsdp.py`` (SAMTrainer under FSDP2, world size 1) if time is left;
6. ``quality``: ``benchmarks/quality.py --budget full`` (the quality sweep on whole GLUE training splits, 3
   epochs) with whatever time is left: it is resumable, so a cut-off run only leaves its records so far
   (``quality/runs/``) for the next lent device to continue; a timeout there is "partial", not a failure.

Each part runs in its own process with its own timeout, cut to the budget left; a part that would start
with too little time left is skipped with a note. Everything lands in ``benchmarks/results/gpu/``: one
log per part, the scripts' JSON/Markdown, and ``summary.{md,json}`` naming the device (``torch.cuda.get_device_name``)
and the torch / CUDA versions. The exit status is 1 if a part failed or timed out.

    python benchmarks/gpu_check.py                  # on the GPU machine: about 8 minutes
    python benchmarks/gpu_check.py --smoke          # the same pipeline on the CPU, tiny, into a temporary folder
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
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results" / "gpu"
MIN_START_S = 30  # a part is not started with less budget than this left


@dataclass
class Part:
    name: str
    cmd: list[str]
    timeout_s: int
    env: dict[str, str] = field(default_factory=dict)
    needs_cuda: bool = False
    resumable: bool = False  # a timeout leaves usable partial results


def parts(a: argparse.Namespace, out: Path) -> list[Part]:
    py, dev = sys.executable, a.device
    net_env = {"HF_ADASAM_NET_DEVICE": dev}
    if a.smoke:  # the same pipeline, tiny: one variant, one impl, one dtype; tiny models; no compiling
        net = ["--variants", "adasam", "--impls", "foreach", "--dtypes", "bfloat16"]
        tests = ["tests/test_kernel_net.py", "-k", "adasam and foreach and bfloat16 and not bias"]
        sizes, opt_kw = ["tiny"], ["--steps", "2", "--warmup", "2", "--impls", "foreach", "--peers", "false",
                                   "--rss", "off"]
        # LoRA's 448 tensors at 0.3M parameters, compiled (the one part of the smoke run that compiles)
        lora = ("lora_tiny", "fp32", ["--steps", "2", "--warmup", "2", "--impls", "compiled,foreach",
                                      "--names", "adasam,sam", "--peers", "false", "--rss", "off"])
        train_kw = ["--hidden", "64", "--layers", "1", "--steps", "2", "--warmup", "1",
                    "--rows", "adamw (plain);two passes, no perturbation (yardstick);SAM over AdamW;ASAM over AdamW"]
        bench_env = {"HF_ADASAM_IMPL": "foreach"}
    else:
        net, bench_env = [], {}
        tests = ["tests/test_kernel_net.py", "-k", "float16",  # bfloat16 and float16 (the names contain it)
                 "tests/test_sam_integrations.py::test_fp16_grad_scaler_trains_and_skips_nonfinite_perturbations",
                 "tests/test_sam_trainer.py::test_bf16_autocast_trains_with_finite_loss"]
        sizes, opt_kw = ["22m", "110m"], ["--steps", "10", "--impls", "compiled", "--peers", "false",
                                          "--mem-gb", "100"]
        lora = ("lora7b", "bf16", opt_kw)
        train_kw = ["--steps", "40", "--warmup", "3"]
    ps = [Part("net", [py, __file__, "--net-worker", str(out / "net"), *net], a.net_timeout, net_env),
          Part("tests", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], a.tests_timeout, net_env)]
    for dtype in ("bf16", "fp16"):  # one of each first, then the bigger size
        ps.append(Part(f"optim_step_{sizes[0]}_{dtype}", [py, str(BENCH / "optim_step.py"), "--size", sizes[0],
                       "--device", dev, "--dtype", dtype, "--out", str(out / f"optim_step_{sizes[0]}_{dtype}"),
                       *opt_kw], a.bench_timeout, bench_env))
        if dtype == "bf16":  # the LoRA shapes next, while the compiled kernels are in the disk cache
            size, lora_dtype, lora_kw = lora
            ps.append(Part(f"optim_step_{size}_{lora_dtype}", [py, str(BENCH / "optim_step.py"), "--size", size,
                           "--device", dev, "--dtype", lora_dtype, "--out",
                           str(out / f"optim_step_{size}_{lora_dtype}"), *lora_kw], a.bench_timeout, bench_env))
        ps.append(Part(f"train_step_{dtype}", [py, str(BENCH / "train_step.py"), "--device", dev, "--dtype", dtype,
                       "--out", str(out / f"train_step_{dtype}"), *train_kw], a.bench_timeout, bench_env))
    for size in sizes[1:]:
        for dtype in ("bf16", "fp16"):
            ps.append(Part(f"optim_step_{size}_{dtype}", [py, str(BENCH / "optim_step.py"), "--size", size,
                           "--device", dev, "--dtype", dtype, "--out", str(out / f"optim_step_{size}_{dtype}"),
                           *opt_kw], a.bench_timeout, bench_env))
    ps.append(Part("fsdp", [py, str(BENCH / "gpu_check_fsdp.py")], a.fsdp_timeout, needs_cuda=True))
    quality = ["--smoke"] if a.smoke else ["--budget", "full", "--runs", str(out / "quality" / "runs")]
    ps.append(Part("quality", [py, str(BENCH / "quality.py"), *quality], a.quality_timeout, resumable=True))
    return ps


def net_worker(out: Path, variants: list[str] | None, impls: list[str] | None, dtypes: list[str] | None) -> None:
    """The net's deviation table on ``$HF_ADASAM_NET_DEVICE`` (one row per variant x impl, one column per dtype)."""
    import torch

    sys.path.insert(0, str(ROOT))
    from tests import _kernel_net as net

    torch._dynamo.config.recompile_limit = torch._dynamo.config.accumulated_recompile_limit = 4096  # as the tests
    ds = [d for d in net.DTYPES if dtypes is None or str(d).removeprefix("torch.") in dtypes]
    rows = []
    for name in variants or list(net.VARIANTS):
        for impl in net.VARIANTS[name].impls:
            if impls is not None and impl not in impls:
                continue
            t0 = time.perf_counter()
            dev = {str(d).removeprefix("torch."): net.measure(name, impl, d) for d in ds}
            rows.append({"variant": name, "impl": impl, "deviation": dev, "s": time.perf_counter() - t0})
            print(f"{name} {impl}: " + ", ".join(f"{k} {v:.1e}" for k, v in dev.items()), flush=True)
    names = [str(d).removeprefix("torch.") for d in ds]
    lines = [f"# the differential net on {net.DEVICE}: largest deviation from the float64 single-tensor path, "
             "relative to the distance it moved the weights", "",
             "| variant | impl | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    lines += [f"| {r['variant']} | {r['impl']} | " + " | ".join(f"{r['deviation'][n]:.1e}" for n in names) + " |"
              for r in rows]
    out.with_suffix(".json").write_text(json.dumps({"device": str(net.DEVICE), "rows": rows}, indent=1))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def environment(device: str) -> dict:
    import torch

    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
           "host_cpu": platform.processor() or platform.machine(), "device_kind": device}
    if device == "cuda":
        env["device"] = torch.cuda.get_device_name(0)
        env["device_count"] = torch.cuda.device_count()
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    else:
        env["device"] = "CPU (smoke run)"
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:
        pass
    return env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true",
                    help="run the same pipeline tiny on the CPU (no compiling) into a temporary folder, to check it")
    ap.add_argument("--device", default=None, choices=["cuda", "cpu"], help="default: cuda, or cpu with --smoke")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results/gpu, or a temporary "
                                                "folder with --smoke)")
    ap.add_argument("--budget-s", type=int, default=480, help="total wall-clock budget for all parts")
    ap.add_argument("--only", default=None, help="run only these parts (comma-separated names, see the summary)")
    ap.add_argument("--net-timeout", type=int, default=150)
    ap.add_argument("--tests-timeout", type=int, default=150)
    ap.add_argument("--bench-timeout", type=int, default=90, help="per optim_step / train_step run")
    ap.add_argument("--fsdp-timeout", type=int, default=240)
    ap.add_argument("--quality-timeout", type=int, default=3600, help="the quality sweep: all the time that is left")
    ap.add_argument("--net-worker", default=None, help=argparse.SUPPRESS)  # internal: the net's table
    ap.add_argument("--variants", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--impls", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--dtypes", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.net_worker:
        net_worker(Path(a.net_worker), *(s.split(",") if s else None for s in (a.variants, a.impls, a.dtypes)))
        return
    a.device = a.device or ("cpu" if a.smoke else "cuda")
    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("benchmarks/gpu_check.py needs a CUDA device (try --smoke to exercise the pipeline on the CPU)")
    out = Path(a.out) if a.out else (Path(tempfile.mkdtemp(prefix="gpu_check_smoke_")) if a.smoke else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    env = environment(a.device)
    print(f"gpu_check on {env['device']} (torch {env['torch']}, CUDA {env['cuda']}) -> {out}", flush=True)
    start = time.perf_counter()
    report = []
    only = set(a.only.split(",")) if a.only else None
    for part in parts(a, out):
        if only is not None and part.name not in only:
            continue
        left = a.budget_s - (time.perf_counter() - start)
        if part.needs_cuda and a.device != "cuda":
            report.append({"part": part.name, "status": "skipped", "note": "needs CUDA"})
            continue
        if left < MIN_START_S:
            report.append({"part": part.name, "status": "skipped",
                           "note": f"{left:.0f} s of the {a.budget_s} s budget left"})
            print(f"[{part.name}] skipped: budget", flush=True)
            continue
        timeout = int(min(part.timeout_s, left))
        log = out / f"{part.name}.log"
        print(f"[{part.name}] (timeout {timeout} s): {' '.join(part.cmd)}", flush=True)
        t0 = time.perf_counter()
        child_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **part.env}
        with log.open("w") as f:
            try:
                rc = subprocess.run(part.cmd, cwd=ROOT, env=child_env, stdout=f, stderr=subprocess.STDOUT,
                                    timeout=timeout).returncode
                status = "passed" if rc == 0 else f"failed (exit {rc})"
            except subprocess.TimeoutExpired:
                status = f"timed out after {timeout} s"
                if part.resumable:
                    status = f"partial: stopped after {timeout} s, resumable"
        took = time.perf_counter() - t0
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        report.append({"part": part.name, "status": status, "s": round(took, 1), "log": log.name,
                       "last_line": tail[0][:300]})
        print(f"[{part.name}] {status} in {took:.0f} s", flush=True)
    total = time.perf_counter() - start
    ok = all(r["status"] in ("passed", "skipped") or r["status"].startswith("partial") for r in report)
    summary = {"environment": env, "budget_s": a.budget_s, "total_s": round(total, 1), "ok": ok, "parts": report}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    lines = [f"# GPU check: {env['device']}", "",
             f"torch {env['torch']}, CUDA {env['cuda']}, transformers {env.get('transformers', '?')}, Python "
             f"{env['python']}, host {env['host_cpu']}; {total:.0f} s of a {a.budget_s} s budget; "
             f"{'all passed' if ok else 'SOME PARTS FAILED'}", "",
             "| part | status | s | log / note |", "|---|---|---:|---|"]
    for r in report:
        lines.append(f"| {r['part']} | {r['status']} | {r.get('s', '')} | {r.get('log', r.get('note', ''))} |")
    lines += ["", "Results: `net.md` (deviation table), `optim_step_<size>_<dtype>.md` (`lora7b`: kernel launches per "
              "step in its calls columns), `train_step_<dtype>.md` beside this file; each part's output in its `.log`."]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
