"""What ``import hf_adasam`` and registering the ``optim`` names cost, in fresh processes.

Two figures, each the median over fresh interpreters (the first run of each kind is discarded so
the page cache is warm for all):

- ``package``: ``import hf_adasam`` (optimizers + ``SAM``) after ``import torch``, and whether it
  imported ``transformers.trainer`` (it must not);
- ``register``: registering the ``optim`` names after ``import transformers`` (``import hf_adasam``
  plus ``hf_adasam.register()`` where the package has it; before the redesign the import itself
  registered);
- ``register_own``: the same after ``transformers.training_args`` and ``transformers.trainer_optimizer``
  are imported, i.e. hf-adasam's own part beyond what any ``TrainingArguments`` user pays: where ``peft``
  is installed, ``transformers.training_args`` imports it (through ``transformers.trainer_utils``), about
  1.6 s on a 2-core x86 CPU, which no registration can avoid since ``OptimizerNames`` lives there.

    PYTHONPATH=$PWD python benchmarks/import_time.py --label after            # this checkout
    PYTHONPATH=/path/to/old/checkout python benchmarks/import_time.py --label before   # hf_adasam_file says which

Each label's row is merged into ``benchmarks/results/import_time.{json,md}``; the issue's budget is
0.5 s for each figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
BUDGET_S = 0.5

PACKAGE = """
import sys, time
import torch
t0 = time.perf_counter()
import hf_adasam
dt = time.perf_counter() - t0
print(dt, *(m in sys.modules for m in ("transformers.trainer", "transformers", "peft")), hf_adasam.__file__)
"""

REGISTER = """
import sys, time
import torch, transformers
PRELOAD
t0 = time.perf_counter()
import hf_adasam
if hasattr(hf_adasam, "register"):
    hf_adasam.register()
dt = time.perf_counter() - t0
print(dt, *(m in sys.modules for m in ("transformers.trainer", "transformers", "peft")), hf_adasam.__file__)
"""
OWN = REGISTER.replace("PRELOAD", "import transformers.training_args, transformers.trainer_optimizer")
REGISTER = REGISTER.replace("PRELOAD", "")


def measure(code: str, runs: int) -> dict:
    times, flags = [], None
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    for i in range(runs + 1):
        # from a neutral folder: `python -c` puts the working directory first on sys.path, ahead of PYTHONPATH
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                             cwd=tempfile.gettempdir())
        dt, trainer, tf, peft, path = out.stdout.split()
        if i:  # the first run warms the page cache
            times.append(float(dt))
        flags = {"imports_transformers_trainer": trainer == "True", "imports_transformers": tf == "True",
                 "imports_peft": peft == "True", "hf_adasam_file": path}
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "runs": runs, **flags}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label", required=True, help="row name, e.g. before / after")
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    import torch
    import transformers

    row = {"package": measure(PACKAGE, a.runs), "register": measure(REGISTER, a.runs),
           "register_own": measure(OWN, a.runs),
           "machine": {"cpu": platform.machine(), "cores": os.cpu_count(), "python": platform.python_version(),
                       "torch": torch.__version__, "transformers": transformers.__version__}}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "import_time.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[a.label] = row
    path.write_text(json.dumps(data, indent=2) + "\n")
    lines = [f"# Import cost (median of fresh processes; budget {BUDGET_S} s each)", "",
             "", "| checkout | `import hf_adasam` after `import torch` | imports `transformers.trainer` | "
             "register the names after `import transformers` | of which hf-adasam's own (after "
             "`transformers.training_args`) | peft imported | machine |", "|---|---:|---|---:|---:|---|---|"]
    for label, r in data.items():
        m = r["machine"]
        own = f"{r['register_own']['median_s']:.3f} s" if "register_own" in r else "not measured"
        lines.append(f"| {label} | {r['package']['median_s']:.3f} s | {r['package']['imports_transformers_trainer']} "
                     f"| {r['register']['median_s']:.3f} s | {own} | {r['register']['imports_peft']} "
                     f"| {m['cores']}-core {m['cpu']}, python {m['python']}, "
                     f"torch {m['torch']}, transformers {m['transformers']} |")
    (RESULTS / "import_time.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
