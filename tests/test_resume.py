"""A SAM run killed (SIGKILL) after a checkpoint and resumed ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).parent / "workers" / "resume_train.py"


def _run(out: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(WORKER), "--out", str(out), *flags], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["ae", "ae_looksam"])
def test_sigkilled_run_resumed_from_checkpoint_is_bit_identical(tmp_path, policy) -> None:
    full = _run(tmp_path / "full", "--policy", policy)
    assert full.returncode == 0, full.stderr[-3000:]

    killed = _run(tmp_path / "killed", "--policy", policy, "--kill", "4")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    ckpt = tmp_path / "killed" / "checkpoint-3"
    assert (ckpt / "sam_state_rank0.pt").is_file()
    assert not (tmp_path / "killed" / "final.pt").exists()

    resumed = _run(tmp_path / "killed", "--policy", policy, "--resume", str(ckpt))
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    want, got = (torch.load(tmp_path / d / "final.pt", weights_only=False) for d in ("full", "killed"))
    for a, b in zip(want["params"], got["params"], strict=True):
        assert torch.equal(a, b)
    # the policy's statistics and counters carried over the kill
    assert got["second_passes"] == want["second_passes"]
    key = "trigger" if policy == "ae_looksam" else "mean"
    assert got["policy"][key] == want["policy"][key]
