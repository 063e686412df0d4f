"""docs/trl.md's examples run as written (offline, CPU): its ```python blocks, in order, as one script."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "trl.md"


def blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)


def test_the_doc_has_sft_dpo_and_grpo_examples_and_the_readme_links_it() -> None:
    code = "\n".join(blocks())
    for trainer in ("SFTTrainer", "DPOTrainer", "GRPOTrainer"):
        assert f"(SAMTrainerMixin, {trainer})" in code
    assert "(docs/trl.md)" in (ROOT / "README.md").read_text()


@pytest.mark.integration
def test_the_examples_run_and_train_with_sam(tmp_path) -> None:
    pytest.importorskip("trl")
    pytest.importorskip("peft")
    check = """
assert type(trainer).__name__ == "SAMSFTTrainer" and trainer.args.sam_config.policy == "ae"
assert trainer.sam.stats.total_micro_batches == 2
print("DOC EXAMPLES OK")
"""
    (tmp_path / "example.py").write_text("\n\n".join(blocks()) + check, encoding="utf-8")
    out = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0 and "DOC EXAMPLES OK" in out.stdout, out.stderr[-3000:]
    assert "hf-adasam: SAM on: rho=0.05" in out.stderr and "policy=ae" in out.stderr
    for folder in ("sft", "dpo", "grpo", "sft-ae"):
        assert (tmp_path / "out" / folder).is_dir()
