"""The docs a pip user reads: generated tables equal to the code, links that resolve, no pointer to files outside
the repository, no prose about the machines the project ran on, and a short README."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = ("algorithms", "sam", "distributed", "numerics", "integration", "compat", "theory", "trl")
# Markdown files with links to check, beside docs/*.md
TOP_MARKDOWN = ("README.md", "CONTRIBUTING.md", "benchmarks/README.md", "recipes/README.md", "model_cards/README.md")

_spec = importlib.util.spec_from_file_location("docs_generate", DOCS / "generate.py")
generate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generate)


# ----------------------------------------------------------------------------------------------
# generated tables
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("path", "name"), list(generate.BLOCKS), ids=lambda v: v.name if isinstance(v, Path) else v)
def test_generated_block_equals_its_generator(path: Path, name: str) -> None:
    have = generate.current(path, name)
    assert have is not None, f"{path.relative_to(ROOT)} lost its <!-- {name}: ... --> markers"
    assert have == generate.BLOCKS[(path, name)](), f"stale: run python docs/generate.py ({name})"


def test_every_optimizer_name_has_a_defaults_table_and_a_section() -> None:
    from hf_adasam import OPTIMIZERS

    headings = _anchors(DOCS / "algorithms.md")
    for name in OPTIMIZERS:
        assert (DOCS / "algorithms.md", f"defaults-{name}") in generate.BLOCKS
    for section in ("sam-and-asam", "ae-sam", "looksam", "ae-looksam", "adasam", "set-adam", "radam", "adai",
                    "adashift", "cprop", "generic-adam", "test-vectors"):
        assert section in headings, section


# ----------------------------------------------------------------------------------------------
# pages and links
# ----------------------------------------------------------------------------------------------
def test_the_pages_exist_and_the_readme_links_each() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for page in PAGES:
        assert (DOCS / f"{page}.md").is_file(), page
        assert f"(docs/{page}.md" in readme, f"README does not link docs/{page}.md"


def test_the_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= 150, f"README.md has {lines} lines; the detail belongs in docs/"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (letters, digits, _ and - kept), spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return _anchors_in(path.read_text(encoding="utf-8"))


def _anchors_in(text: str) -> set[str]:
    counts: dict[str, int] = {}  # a repeated heading gets -1, -2, ...
    anchors, fenced = set(), False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        m = None if fenced else re.match(r"#{1,6} +(.*?)#*\s*$", line)
        if m:
            s = _slug(m.group(1))
            anchors.add(f"{s}-{counts[s]}" if s in counts else s)
            counts[s] = counts.get(s, 0) + 1
    return anchors


def _check(target: Path, anchor: str | None, where: str) -> str | None:
    if not target.exists():
        return f"{where}: {target.relative_to(ROOT)} does not exist"
    if anchor and (target.suffix != ".md" or anchor not in _anchors(target)):
        return f"{where}: {target.relative_to(ROOT)} has no heading #{anchor}"
    return None


def _text_files() -> list[Path]:
    """The repository's text files (not .git, virtual environments, caches or run outputs)."""
    out = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if (not d.startswith(".") or d == ".ci") and d not in (
            "__pycache__", "runs", "build", "dist", "node_modules") and not d.endswith(".egg-info")]
        for f in files:
            p = Path(folder, f)
            if p.suffix in (".py", ".md", ".json", ".toml", ".txt", ".cfg", ".yml", ".yaml", ".sh") or (
                    p.parent.name == ".ci" and not p.suffix):
                out.append(p)
    return out


DOCS_LINK = re.compile(r"(?<![\w/.-])docs/([\w-]+\.md)(?:#([\w-]+))?")


def test_every_docs_link_names_an_existing_page_and_heading() -> None:
    """``docs/<page>.md#<anchor>`` anywhere (docstrings, comments, configs, Markdown), read from the repository root."""
    problems, count = [], 0
    for path in _text_files():
        for m in DOCS_LINK.finditer(path.read_text(encoding="utf-8", errors="replace")):
            count += 1
            problems.append(_check(DOCS / m.group(1), m.group(2), str(path.relative_to(ROOT))))
    assert count > 50  # the docstrings do point here
    assert not [p for p in problems if p], "\n".join(p for p in problems if p)


def test_markdown_links_resolve() -> None:
    """Relative links ``[text](path#anchor)`` in the README, docs/ and the folders' READMEs."""
    files = sorted(DOCS.glob("*.md")) + [ROOT / f for f in TOP_MARKDOWN if (ROOT / f).exists()]
    problems, count = [], 0
    for path in files:
        text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]+))?\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # https://, mailto:
            count += 1
            problems.append(_check((path.parent / target).resolve() if target else path, anchor or None,
                                   str(path.relative_to(ROOT))))
    assert count > 30
    assert not [p for p in problems if p], "\n".join(p for p in problems if p)


def test_the_anchor_rule_is_githubs() -> None:
    assert _slug("Reddi et al.'s counterexample") == "reddi-et-als-counterexample"
    assert _slug("SAM and ASAM") == "sam-and-asam"
    assert _slug("Numerics: kernels, the differential net, dtypes") == "numerics-kernels-the-differential-net-dtypes"
    assert _slug("`SAM` in your own loop") == "sam-in-your-own-loop"


# ----------------------------------------------------------------------------------------------
# nothing points outside the repository, nothing talks about the project's machines
# ----------------------------------------------------------------------------------------------
SECTION = "\u00a7"
SPEC_POINTERS = [
    re.compile(r"spec\s*(" + SECTION + r"|\\u00a7)", re.I),  # "spec", the section sign, or JSON's escape of it
    re.compile("(" + SECTION + r"|\\u00a7)\s*\d"),  # a bare section sign and number
    re.compile("ALGORITHMS" + r"\.md"),  # the project's private spec file
]


def test_nothing_points_at_the_private_spec() -> None:
    found = []
    for path in _text_files():
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if any(p.search(line) for p in SPEC_POINTERS):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not found, "point at docs/ instead:\n" + "\n".join(found)


MACHINE_PROSE = re.compile(
    r"this project's|the project's (own )?machines?|on the project's|this machine|our machine|no GPU was available"
    r"|had no GPU|not run here|tried here|measured here|this 2-core", re.I)


def test_no_prose_about_the_projects_machines() -> None:
    """A figure names its hardware ("a 2-core x86 CPU") and its results file, not "this machine"."""
    files = sorted(DOCS.glob("*.md")) + [ROOT / f for f in TOP_MARKDOWN if (ROOT / f).exists()]
    found = [f"{p.relative_to(ROOT)}:{n}: {line.strip()[:100]}" for p in files
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if MACHINE_PROSE.search(line)]
    assert not found, "\n".join(found)


def test_the_checks_catch_what_they_look_for() -> None:
    assert any(p.search("follows the authors' code (spec " + SECTION + "6)") for p in SPEC_POINTERS)
    assert any(p.search('"_about": "rho 0.05 = spec ' + "\\" + 'u00a72 default"') for p in SPEC_POINTERS)
    assert any(p.search("see ../shared/ALGORITHMS" + ".md") for p in SPEC_POINTERS)
    assert MACHINE_PROSE.search("Measured on this project's 2-core CPU")
    assert _check(DOCS / "algorithms.md", "no-such-heading", "x") is not None
    assert _check(DOCS / "no-such-page.md", None, "x") is not None
    assert _anchors_in("# A\n## A\n```\n# not a heading\n```\n### A\n") == {"a", "a-1", "a-2"}
