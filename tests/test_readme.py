"""The README states facts that live in code; these tests keep the two equal.

The generated tables (README's optimizer table, docs' defaults, knobs, versions and non-finite tables) are written by
``python docs/generate.py`` and kept equal by tests/test_docs.py; the tests here keep the README's other facts true.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from hf_adasam.transformers_integration import _internals

README = Path(__file__).resolve().parents[1] / "README.md"


def _pattern(marker: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- {marker}:[^\n]*-->\n)(.*?)(<!-- end {marker} -->)", re.S)


def _page(marker: str) -> Path:
    """The page (README.md, or one of docs/) that holds ``marker``'s block."""
    for page in [README, *sorted((README.parent / "docs").glob("*.md"))]:
        if _pattern(marker).search(page.read_text()):
            return page
    raise AssertionError(f"no page holds the {marker} markers (README.md, docs/*.md)")


def test_ci_runs_the_readme_test_command() -> None:
    ci = (README.parent / ".ci" / "run").read_text()
    assert "ci: test-command" in ci
    cmd = README.read_text().split("<!-- ci: test-command -->", 1)[1].splitlines()[2]
    assert cmd.startswith("pip install torch==2.13.0") and "pytest" in cmd


def _block(marker: str) -> str:
    return _pattern(marker).search(_page(marker).read_text()).group(2).strip()


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
