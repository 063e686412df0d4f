"""The README's main job, timed: MiniLM-L6 on GLUE SST-2 with AdaSAM under AE-SAM, from its config file.

Runs ``recipes/glue/run_glue.py recipes/glue/configs/sst2_minilm_adasam_ae.json`` as the README says (the
output goes to a temporary folder instead of ``runs/``) and records the wall time, the dev accuracy and
the majority-class baseline beside it, so the README's figures come from a file this script writes.

    python benchmarks/main_job.py          # writes benchmarks/results/main_job.{json,md}
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


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "recipes/glue/run_glue.py", CONFIG, "--output_dir", tmp]
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        wall = time.perf_counter() - t0
        metrics = json.loads((Path(tmp) / "all_results.json").read_text())
    result = {"command": f"python recipes/glue/run_glue.py {CONFIG}", "wall_s": wall,
              "eval_accuracy": metrics["eval_accuracy"], "majority_baseline_accuracy": metrics[
                  "majority_baseline_accuracy"], "python": sys.executable, "metrics": metrics,
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "threads": torch.get_num_threads(), "torch": torch.__version__}}
    md = (f"# README main job: `{result['command']}`\n\n"
          f"| wall time | dev accuracy | majority-class baseline | machine |\n|---:|---:|---:|---|\n"
          f"| {int(wall // 60)} min {wall % 60:.0f} s | {result['eval_accuracy']:.4f} | "
          f"{result['majority_baseline_accuracy']:.4f} | "
          f"{result['machine']['cores']}-core {result['machine']['cpu']} CPU, torch {torch.__version__} |\n")
    result["readme_line"] = (
        f"Measured on this project's {result['machine']['cores']}-core CPU: {int(wall // 60)} min {wall % 60:.0f} s "
        f"after the install, SST-2 dev accuracy {result['eval_accuracy']:.4f} against the majority-class baseline's "
        f"{result['majority_baseline_accuracy']:.4f} (`benchmarks/main_job.py` → `benchmarks/results/main_job.md`).")
    md += f"\nREADME: {result['readme_line']}\n"
    print(md)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "main_job.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "main_job.md").write_text(md)


if __name__ == "__main__":
    main()
