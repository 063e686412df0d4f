"""The README's main job, timed: MiniLM-L6 on GLUE SST-2 with AdaSAM under AE-SAM, from its config file.

Runs ``recipes/glue/run_glue.py recipes/glue/configs/sst2_minilm_adasam_ae.json`` as the README says (the
output goes to a temporary folder instead of ``runs/``) and records the wall time, the dev accuracy and
the majority-class baseline beside it, so the README's figures come from a file this script writes.

    python benchmarks/main_job.py            # writes benchmarks/results/main_job.{json,md}
    python benchmarks/main_job.py --rewrite  # rewrites both from the recorded run (after a wording change)
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
CONFIG = "recipes/glue/configs/sst2_minilm_adasam_ae.json"


def readme_line(result: dict) -> str:
    """The README's sentence about the run, from the recorded figures and machine."""
    wall, machine = result["wall_s"], result["machine"]
    return (f"On a {machine['cores']}-core {machine['cpu']} CPU (torch {machine['torch']}): {int(wall // 60)} min "
            f"{wall % 60:.0f} s after the install, SST-2 dev accuracy {result['eval_accuracy']:.4f} against the "
            f"majority-class baseline's {result['majority_baseline_accuracy']:.4f}{_quality_text(result)} "
            "(`benchmarks/results/main_job.md`, written by `benchmarks/main_job.py`).")


def _quality_text(result: dict) -> str:
    """The quality sweep's base rows at the same budget, as the run printed them (none before the sweep has them)."""
    m = result.get("metrics", {})
    got = [f"{name} {m[key]:.4f}" for name, key in (("AdamW", "quality_adamw_accuracy"),
                                                    ("AMSGrad", "quality_amsgrad_accuracy")) if key in m]
    return f" and the quality sweep's {' and '.join(got)} at the same budget (mean of its seeds)" if got else ""


def write(result: dict) -> None:
    wall, machine = result["wall_s"], result["machine"]
    result["readme_line"] = readme_line(result)
    md = (f"# README main job: `{result['command']}`\n\n"
          f"| wall time | dev accuracy | majority-class baseline | machine |\n|---:|---:|---:|---|\n"
          f"| {int(wall // 60)} min {wall % 60:.0f} s | {result['eval_accuracy']:.4f} | "
          f"{result['majority_baseline_accuracy']:.4f} | "
          f"{machine['cores']}-core {machine['cpu']} CPU, torch {machine['torch']} |\n")
    md += f"\nREADME: {result['readme_line']}\n"
    print(md)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "main_job.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "main_job.md").write_text(md)


def run() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "recipes/glue/run_glue.py", CONFIG, "--output_dir", tmp]
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        wall = time.perf_counter() - t0
        metrics = json.loads((Path(tmp) / "all_results.json").read_text())
    return {"command": f"python recipes/glue/run_glue.py {CONFIG}", "wall_s": wall,
            "eval_accuracy": metrics["eval_accuracy"], "majority_baseline_accuracy": metrics[
                "majority_baseline_accuracy"], "python": sys.executable, "metrics": metrics,
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                        "threads": torch.get_num_threads(), "torch": torch.__version__}}


def main(argv: list[str]) -> None:
    if argv == ["--rewrite"]:
        write(json.loads((RESULTS / "main_job.json").read_text()))
    elif not argv:
        write(run())
    else:
        sys.exit(f"unknown arguments {argv!r}; allowed: --rewrite, or none")


if __name__ == "__main__":
    main(sys.argv[1:])
