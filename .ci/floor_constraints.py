"""Print pip constraints pinning every ``>=`` floor of ``transformers`` and ``accelerate`` in pyproject.toml.

    python .ci/floor_constraints.py > floor.txt   # transformers==X, accelerate==Y (+ torch==2.13.0)

The floors live once, in pyproject.toml's dependencies; CI's floor stage installs exactly them.
"""

import re
import sys
import tomllib
from pathlib import Path

FLOORED = ("transformers", "accelerate")


def floors() -> dict[str, str]:
    deps = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
    out = {}
    for dep in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)", dep.strip())
        if m and m.group(1) in FLOORED:
            out[m.group(1)] = m.group(2)
    missing = set(FLOORED) - set(out)
    if missing:
        sys.exit(f"pyproject.toml declares no >= floor for {', '.join(sorted(missing))}")
    return out


if __name__ == "__main__":
    print("torch==2.13.0")
    for name, version in floors().items():
        print(f"{name}=={version}")
