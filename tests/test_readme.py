"""The README states facts that live in code; these tests keep the two equal."""

from __future__ import annotations

import re
from pathlib import Path

from hf_adasam.registry import markdown_table

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
