"""Print pip constraints pinning every ``>=`` floor of ``transformers`` and ``accelerate`` in pyproject.toml.

    python .ci/floor_constraints.py > floor.txt   # transformers==X, accelerate==Y (+ torch==2.13.0)

The floors live once, in pyproject.toml's dependencies; CI's floor stage installs exactly them.
"""

import re
import sys
from pathlib import Path

FLOORED = ("transformers", "accelerate")


def floors() -> dict[str, str]:
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    deps = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)  # no tomllib on Python 3.10
    out = dict(re.findall(rf'"({"|".join(FLOORED)})>=([0-9][0-9.]*)"', deps))
    missing = set(FLOORED) - set(out)
    if missing:
        sys.exit(f"pyproject.toml declares no >= floor for {', '.join(sorted(missing))}")
    return out


if __name__ == "__main__":
    print("torch==2.13.0")
    for name, version in floors().items():
        print(f"{name}=={version}")
