"""The README states facts that live in code; these tests keep the two equal."""

from __future__ import annotations

import json
import re
from pathlib import Path

from hf_adasam.registry import markdown_table
from hf_adasam.transformers_integration import _internals

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_optimizer_table_is_the_generated_one() -> None:
    text = README.read_text()
    m = re.search(r"<!-- optimizer-table:[^\n]*-->\n(.*?)<!-- end optimizer-table -->", text, re.S)
    assert m, "README lost its optimizer-table markers"
    assert m.group(1).strip() == markdown_table(), "regenerate with hf_adasam.registry.markdown_table()"


def test_ci_runs_the_readme_test_command() -> None:
    ci = (README.parent / ".ci" / "run").read_text()
    assert "ci: test-command" in ci
    cmd = README.read_text().split("<!-- ci: test-command -->", 1)[1].splitlines()[2]
    assert cmd.startswith("pip install torch==2.13.0") and "pytest" in cmd


def _block(marker: str) -> str:
    m = re.search(rf"<!-- {marker}:[^\n]*-->\n(.*?)<!-- end {marker} -->", README.read_text(), re.S)
    assert m, f"README lost its {marker} markers"
    return m.group(1).strip()


def test_readme_main_job_figures_come_from_the_committed_results() -> None:
    result = json.loads((README.parent / "benchmarks" / "results" / "main_job.json").read_text())
    assert _block("main-job") == result["readme_line"]
    assert "sst2_minilm_adasam_ae.json" in result["command"] and result["command"] in README.read_text()
    assert result["eval_accuracy"] > result["majority_baseline_accuracy"] + 0.1  # the main job visibly learns


def test_ci_runs_integration_tests_on_the_declared_floors() -> None:
    ci = (README.parent / ".ci" / "run").read_text()
    assert "floor_constraints.py" in ci and "pytest -m integration" in ci
    floor = re.search(r'"transformers>=([0-9.]+)"', (README.parent / "pyproject.toml").read_text()).group(1)
    assert _internals.CHECKED.startswith(floor), "the private names were checked on another floor"
