"""CONTRIBUTING.md's "Add an optimizer" stays true: every registered optimizer has the places it names (its module,
its export, a complete registry entry, its test vectors), the registry fields it explains are the real ones, and
every file it names exists."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest

import hf_adasam
from hf_adasam import optim
from hf_adasam.registry import OPTIMIZERS, SPREAD, OptimEntry, Variant, variants

ROOT = Path(__file__).resolve().parents[1]
GUIDE = (ROOT / "CONTRIBUTING.md").read_text()
# tests that run every registered optimizer from the registry: not an optimizer's own test vectors
HARNESS = {"test_contributing.py", "test_registry.py", "test_kernel_net.py", "test_memory.py",
           "test_optim_properties.py", "test_dispatch.py", "test_readme.py", "test_trainer_situations.py"}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_the_class_has_its_own_module_and_is_exported(name: str) -> None:
    cls = OPTIMIZERS[name].cls
    module = cls.__module__
    assert module.startswith("hf_adasam.optim.") and not module.rsplit(".", 1)[1].startswith("_"), module
    assert (ROOT / (module.replace(".", "/") + ".py")).is_file()
    assert cls.__name__ in optim.__all__ and getattr(hf_adasam, cls.__name__) is cls
    assert cls.__name__ in hf_adasam.__all__


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_the_entry_states_every_fact(name: str) -> None:
    e = OPTIMIZERS[name]
    knobs = set(e.knobs())
    assert e.paper and e.state, f"{name}: paper and state are stated in words"
    assert e.variants and all(isinstance(v, Variant) for v in e.variants.values())
    for suffix, v in e.variants.items():
        assert isinstance(v.state_arrays, int) and v.state_arrays >= 0, f"{name}/{suffix}"
        assert set(v.knobs) <= knobs, f"{name}/{suffix}: {set(v.knobs) - knobs} are not constructor knobs"
    assert "" not in list(e.variants)[1:], f"{name}: the base variant (suffix '') comes first"
    assert isinstance(e.traffic, int) and e.traffic >= 3, "at least p read, g read, p written"
    assert isinstance(e.kernels, int) and e.kernels >= 1
    assert len(e.nonfinite) == 2 and all(c.split()[0].strip(",") in SPREAD for c in e.nonfinite), e.nonfinite
    assert e.lr > 0 and set(e.bench) <= knobs


def test_variant_names_are_unique() -> None:
    names = [n for e in OPTIMIZERS.values() for n in e.named_variants()]
    assert len(names) == len(set(names)) == len(variants())


@pytest.mark.parametrize("cls", sorted({e.cls for e in OPTIMIZERS.values()}, key=lambda c: c.__name__),
                         ids=lambda c: c.__name__)
def test_every_optimizer_has_its_test_vectors(cls: type) -> None:
    own = [p.name for p in sorted((ROOT / "tests").glob("test_*.py"))
           if p.name not in HARNESS and re.search(rf"\b{cls.__name__}\b", p.read_text())]
    assert own, f"no test file of its own names {cls.__name__} (CONTRIBUTING.md step 4)"


def test_the_guide_explains_the_registry_fields_that_exist() -> None:
    table = GUIDE.split("### The registry entry", 1)[1].split("\n## ", 1)[0]
    explained = {n for row in re.findall(r"^\| (`.*?) \|", table, re.M) for n in re.findall(r"`(\w+)`", row)}
    fields = {f.name for f in dataclasses.fields(OptimEntry)}
    assert explained == fields, f"explained but gone: {explained - fields}; not explained: {fields - explained}"
    assert inspect.signature(Variant).parameters.keys() == {"state_arrays", "knobs"}
    assert "Variant(state_arrays, knobs)" in table


def test_the_files_the_guide_names_exist() -> None:
    paths = set(re.findall(r"`((?:hf_adasam|tests|benchmarks|docs|\.ci)/[\w./-]*|README\.md)`", GUIDE))
    paths |= set(re.findall(r"(?:^|\s)((?:tests|benchmarks)/[\w./]+\.py)", GUIDE, re.M))
    paths = {p.rstrip(".") for p in paths if "<" not in p and "*" not in p}
    assert len(paths) > 15, paths
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"CONTRIBUTING.md names files that do not exist: {missing}"
    for script in ("optim_step.py", "first_step.py", "profile_step.py", "gpu_check.py"):
        assert (ROOT / "benchmarks" / script).is_file()


def test_the_guide_installs_what_ci_installs() -> None:
    """The set-up line is the start of the README's test command, the one .ci/run runs."""
    ci_cmd = (ROOT / "README.md").read_text().split("<!-- ci: test-command -->", 1)[1].splitlines()[2]
    setup = re.search(r"^pip install .*$", GUIDE, re.M).group(0)
    assert ci_cmd.startswith(setup + " &&"), (setup, ci_cmd)
