"""Print pip constraints pinning the floors CI's floor stage installs, read from pyproject.toml.

    python .ci/floor_constraints.py > floor.txt               # torch==T, transformers==X, accelerate==Y
    python .ci/floor_constraints.py --trl > floor-trl.txt     # torch==T, transformers==X, trl==Z ([trl] extra's floor)
    python .ci/floor_constraints.py --trl-accelerate          # accelerate==the higher of Y and the installed trl's
                                                              # own accelerate floor (trl 1.x needs >= 1.4.0)

The floors live once, in pyproject.toml: torch, transformers and accelerate in its dependencies, trl in the
``trl`` extra; CI's floor stage installs exactly them (torch's floor is a CUDA wheel from PyPI, ~3 GB with its
nvidia-* dependencies, which pip caches). trl's stage leaves accelerate to trl's own floor, which can be above
ours (it is read from the installed trl's metadata, so it is never copied here).
"""

import re
import sys
from pathlib import Path

FLOORED = ("torch", "transformers", "accelerate")


def _pyproject() -> str:
    return (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()


def _floors(block: str, names: tuple[str, ...], where: str) -> dict[str, str]:
    out = dict(re.findall(rf'"({"|".join(names)})>=([0-9][0-9.]*)"', block))
    missing = set(names) - set(out)
    if missing:
        sys.exit(f"pyproject.toml declares no >= floor for {', '.join(sorted(missing))} in {where}")
    return out


def floors() -> dict[str, str]:
    deps = re.search(r"^dependencies = \[(.*?)^\]", _pyproject(), re.S | re.M).group(1)  # no tomllib on Python 3.10
    return _floors(deps, FLOORED, "dependencies")


def trl_floor() -> str:
    extra = re.search(r"^trl = \[(.*?)\]", _pyproject(), re.S | re.M)
    if extra is None:
        sys.exit("pyproject.toml has no [project.optional-dependencies] trl extra")
    return _floors(extra.group(1), ("trl",), "the trl extra")["trl"]


def _version(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


def accelerate_for_installed_trl() -> str:
    """The higher of our accelerate floor and the one the installed trl declares."""
    from importlib.metadata import requires

    ours = floors()["accelerate"]
    theirs = [m.group(1) for r in requires("trl") or [] if (m := re.match(r"accelerate\s*>=\s*([0-9.]+)", r))
              and "extra ==" not in r]
    return max([ours, *theirs], key=_version)


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "--trl-accelerate":
        print(f"accelerate=={accelerate_for_installed_trl()}")
    elif mode == "--trl":
        print(f"torch=={floors()['torch']}")
        print(f"transformers=={floors()['transformers']}")
        print(f"trl=={trl_floor()}")
    elif mode:
        sys.exit(f"unknown option {mode!r}; allowed: --trl, --trl-accelerate, or none")
    else:
        for name, version in floors().items():
            print(f"{name}=={version}")
