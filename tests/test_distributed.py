"""SAMTrainer under DDP: ``torchrun --nproc_per_node 2`` on CPU (gloo), against a single process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .workers.ddp_train import train

WORKER = Path(__file__).parent / "workers" / "ddp_train.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tmp_path: Path, *flags: str) -> list[dict]:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(WORKER), "--out", str(out), *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [torch.load(f"{out}.rank{r}.pt") for r in range(2)]


@pytest.mark.slow
def test_ddp_ranks_hold_identical_weights_and_take_identical_ae_decisions(tmp_path) -> None:
    ranks = _torchrun(tmp_path, "--policy", "ae", "--steps", "20")
    assert [r["world_size"] for r in ranks] == [2, 2]
    for a, b in zip(ranks[0]["params"], ranks[1]["params"], strict=True):
        assert torch.equal(a, b)
    # the decisions use the replica-mean ||g||²: equal counts on both ranks, and some of each kind
    assert ranks[0]["second_passes"] == ranks[1]["second_passes"]
    assert 0 < ranks[0]["second_passes"] < ranks[0]["micro_batches"] == 20


@pytest.mark.slow
def test_ddp_synced_perturbation_equals_one_process_with_double_batch(tmp_path) -> None:
    # SAM over SGD: the update is linear in the gradient, so float32 rounding differences between the
    # two reductions stay at rounding size (an adaptive base such as AdaSAM divides by sqrt(v), which
    # magnifies them without bound for coordinates whose gradient is near 0)
    ranks = _torchrun(tmp_path, "--sync", "--optim", "sgd", "--rho", "0.05")
    kw = dict(batch=8, sync=False, policy="always", optim="sgd", rho=0.05)
    single = train(str(tmp_path / "single"), **kw)
    start = train(str(tmp_path / "zero"), steps=0, **kw)
    for a, b, p in zip(ranks[0]["params"], ranks[1]["params"], single.model.parameters(), strict=True):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, p.detach(), rtol=1e-5, atol=1e-5)
    moved = max((a - p).abs().max().item() for a, p in zip(ranks[0]["params"], start.model.parameters(), strict=True))
    assert moved > 1e-4
    assert single.sam.stats.total_second_passes == 5
