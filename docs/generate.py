"""The tables in README.md and docs/*.md that state facts of the code, generated from that code.

Each block sits between ``<!-- NAME: ... -->`` and ``<!-- end NAME -->``; :data:`BLOCKS` says which function
writes it. ``tests/test_docs.py`` keeps every block equal to its function, so a default changed in a constructor
or in ``SAMConfig`` fails the tests until the docs are regenerated:

    python docs/generate.py            # rewrite every block in place
    python docs/generate.py --check    # exit 1, naming the blocks that differ
"""

from __future__ import annotations

import inspect
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from hf_adasam.optim._base import AUTO_SWITCH_S  # noqa: E402
from hf_adasam.optim_args import format_value  # noqa: E402
from hf_adasam.registry import OPTIMIZERS, markdown_table, nonfinite_table  # noqa: E402
from hf_adasam.sharpness.config import knob_table  # noqa: E402


def _value(v: Any) -> str:
    return "required (no default)" if v is inspect.Parameter.empty else f"`{format_value(v)}`"


def optimizer_defaults(name: str) -> str:
    """One ``optim`` name's knobs: the constructor's defaults and what sets each under ``Trainer``."""
    entry = OPTIMIZERS[name]
    params = inspect.signature(entry.cls.__init__).parameters
    lines = ["| knob | default | under `Trainer` |", "|---|---|---|",
             f"| `lr` | {_value(params['lr'].default)} | `learning_rate` |",
             f"| `weight_decay` | {_value(params['weight_decay'].default)} | `weight_decay` (Trainer's decay / "
             "no-decay groups) |"]
    for knob, default in entry.knobs().items():
        if knob == "impl":
            continue
        fields = entry.hf_args.get(knob)
        hf = "" if fields is None else (
            f"; `{'`/`'.join((fields,) if isinstance(fields, str) else fields)}` when set away from "
            "`TrainingArguments`' defaults")
        lines.append(f"| `{knob}` | {_value(default)} | `optim_args` key `{knob}`{hf} |")
    for knob, value in entry.fixed.items():
        lines.append(f"| `{knob}` | {_value(value)}, fixed by the name | — |")
    return "\n".join(lines)


def sam_knobs(*names: str) -> str:
    """The rows of :func:`~hf_adasam.sharpness.config.knob_table` for ``names``, under its header."""
    header, rule, *rows = knob_table().splitlines()
    picked = [r for r in rows if any(r.startswith(f"| `{n}` |") for n in names)]
    if len(picked) != len(names):
        raise ValueError(f"SAMConfig has no knob among {names!r} for some name; it has: {knob_table()}")
    return "\n".join([header, rule, *picked])


def versions() -> str:
    """What ``pyproject.toml`` declares and what ``.ci/run`` tests: the README's test command pins torch, the floor
    stage installs the declared floors (``.ci/floor_constraints.py``)."""
    toml = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    deps = re.search(r"^dependencies = \[(.*?)^\]", toml, re.S | re.M).group(1)
    trl_extra = re.search(r"^trl = \[(.*?)\]", toml, re.S | re.M).group(1)

    def spec(block: str, name: str) -> str:
        return re.search(rf'"{name}([<>=!~][^"]*)"', block).group(1)

    command = (ROOT / "README.md").read_text(encoding="utf-8").split("<!-- ci: test-command -->", 1)[1]
    torch_pin = re.search(r"torch==([0-9][0-9.]*)", command).group(1)
    python = re.search(r'^requires-python = "([^"]+)"', toml, re.M).group(1)
    lines = ["| package | declared (`pyproject.toml`) | CI tests (`.ci/run`) |", "|---|---|---|",
             f"| Python | `{python}` | the `python3` of CI's image |",
             f"| torch | `{spec(deps, 'torch')}` (see below) | {torch_pin} (the test command pins it); "
             f"{spec(deps, 'torch').lstrip('>=')} (floor stage) |"]
    for name in ("transformers", "accelerate"):
        declared = spec(deps, name)
        lines.append(f"| {name} | `{declared}` | the newest release; {declared.lstrip('>=')} (floor stage) |")
    declared = spec(trl_extra, "trl")
    lines.append(f"| trl (`trl` extra) | `{declared}` | the newest release; {declared.lstrip('>=')} (trl floor stage, "
                 "with accelerate at trl's own floor) |")
    return "\n".join(lines)


QUALITY_PENDING = (
    "The paired, lr-tuned quality sweep (`benchmarks/quality.py`: MiniLM-L6 on SST-2, with and without label noise,\n"
    "and STS-B; each method against its base over paired seeds) is in progress; its table will be in\n"
    "`benchmarks/results/quality/summary.md`. Until then this README makes no quality claims.")


def quality_claims() -> str:
    """The README's "When does it help?": the lines ``benchmarks/quality.py`` writes into its summary from the table
    (complete comparisons only); until a summary exists, a sentence that claims nothing."""
    path = ROOT / "benchmarks" / "results" / "quality" / "summary.json"
    return json.loads(path.read_text(encoding="utf-8"))["readme"] if path.exists() else QUALITY_PENDING


BENCH = ROOT / "benchmarks" / "results"


def main_job_line() -> str:
    """The README's main-job sentence, as ``benchmarks/main_job.py`` wrote it into its results file."""
    return json.loads((BENCH / "main_job.json").read_text(encoding="utf-8"))["readme_line"]


SPEED_SHAPES = {"22m": "MiniLM 22.7M, 103 tensors", "110m": "BERT-base 110M, 199", "lora7b": "LoRA-7B 20M, 448"}


def speed_table() -> str:
    """benchmarks/README.md's step-time table: every optimizer's compiled step × AdamW fused (and × its own byte
    floor) at each shape set, from the committed ``optim_step_<size>.json``; then the first step and SAM's ops."""
    res = {k: json.loads((BENCH / f"optim_step_{k}.json").read_text(encoding="utf-8")) for k in SPEED_SHAPES
           if (BENCH / f"optim_step_{k}.json").exists()}
    rows = {k: {r["optimizer"]: r for r in v["rows"]} for k, v in res.items()}
    lines = ["| optimizer (compiled) | " + " | ".join(f"{SPEED_SHAPES[k]}: × AdamW fused (× floor, calls)"
                                                     for k in res) + " |", "|---" + "|---:" * len(res) + "|"]
    labels = [f"{n} compiled" for n in OPTIMIZERS] + ["SAM over AdamW fused (hf_adasam.SAM, compiled)"]
    for label in labels:
        cells = []
        for k in res:
            r = rows[k].get(label)
            cells.append("–" if r is None else f"{r['vs_adamw_fused']:.2f} ({r['vs_floor']:.2f}, {r['calls']})")
        lines.append(f"| {label.removesuffix(' compiled')} | " + " | ".join(cells) + " |")
    m = next(iter(res.values()))["machine"]
    lines += ["", f"{m.get('cpu', 'CPU')}, {m.get('threads', '?')} threads, torch {m.get('torch', '?')}; median of "
              "interleaved steps in one process; floor: the arrays the step must read and write at the machine's "
              "copy bandwidth; calls: torch's profiler, dispatcher calls per step (`optim_step_<shapes>.md`)."]
    first = BENCH / "first_step.json"
    if first.exists():
        fs = json.loads(first.read_text(encoding="utf-8"))
        ours = [r for r in fs["rows"] if r["optimizer"] != "adamw_fused"]
        cold = [r[k]["first_s"] for r in ours for k in fs["shapes"]]
        warm = [r["warm"]["first_s"] for r in ours if "warm" in r]
        short = [r["short_auto"]["process_s"] / r["short_foreach"]["process_s"] for r in ours if "short_auto" in r]
        lines += ["", "First step with the compiled kernels forced (`first_step.md`): "
                  f"{min(cold):.1f}–{max(cold):.1f} s with an empty inductor cache, {min(warm):.1f}–{max(warm):.1f} s "
                  f"with a warm one; under the default (`auto`: foreach until {AUTO_SWITCH_S:g} s of steps) the first "
                  "steps compile nothing. A 10-step run of a 0.3M-parameter model from an empty cache: "
                  f"{min(short):.2f}–{max(short):.2f}× its foreach time."]
    train = BENCH / "train_step_cpu.json"
    if train.exists():
        ts = {r["setup"]: r for r in json.loads(train.read_text(encoding="utf-8"))["rows"]}
        sam = ts.get("SAM over AdamW")
        if sam and "sam_ops_vs_floor" in sam:
            ops_ms = 1e3 * sam["sam_ops_s_per_step"]
            lines += ["", f"SAMTrainer at 5.3M parameters (`train_step_cpu.md`): SAM over AdamW "
                      f"{sam['ratio_mean']:.2f}× the plain step; SAM's own ops {ops_ms:.1f} ms a step, "
                      f"{sam['sam_ops_vs_floor']:.2f}× their byte floor."]
    return "\n".join(lines)



DOCS = ROOT / "docs"
# (file, block name) -> the function that writes the block
BLOCKS: dict[tuple[Path, str], Callable[[], str]] = {
    (ROOT / "README.md", "optimizer-table"): markdown_table,
    (ROOT / "README.md", "quality"): quality_claims,
    (ROOT / "README.md", "main-job"): main_job_line,
    (ROOT / "benchmarks" / "README.md", "speed"): speed_table,
    (DOCS / "sam.md", "sam-knob-table"): knob_table,
    (DOCS / "numerics.md", "nonfinite-table"): nonfinite_table,
    (DOCS / "compat.md", "versions"): versions,
    (DOCS / "algorithms.md", "defaults-sam"): lambda: sam_knobs("rho", "adaptive", "eta", "asam_scope"),
    (DOCS / "algorithms.md", "defaults-policies"): lambda: sam_knobs(
        "policy", "ae_delta", "ae_lambdas", "looksam_k", "looksam_alpha"),
    **{(DOCS / "algorithms.md", f"defaults-{name}"): (lambda name=name: optimizer_defaults(name))
       for name in OPTIMIZERS},
}


def pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- {re.escape(name)}:[^\n]*-->\n)(.*?)(<!-- end {re.escape(name)} -->)", re.S)


def current(path: Path, name: str) -> str | None:
    """The block's text as the file has it now (``None``: the file lacks the markers)."""
    m = pattern(name).search(path.read_text(encoding="utf-8"))
    return None if m is None else m.group(2).strip()


def main(argv: list[str]) -> int:
    check = argv == ["--check"]
    if argv and not check:
        print(f"unknown arguments {argv!r}; allowed: --check, or none", file=sys.stderr)
        return 2
    stale = []
    for (path, name), make in BLOCKS.items():
        text, want = path.read_text(encoding="utf-8"), make()
        m = pattern(name).search(text)
        if m is None:
            print(f"{path.relative_to(ROOT)}: no <!-- {name}: ... --> ... <!-- end {name} --> markers", file=sys.stderr)
            return 1
        if m.group(2).strip() == want:
            continue
        stale.append(f"{path.relative_to(ROOT)}: {name}")
        if not check:
            path.write_text(text[:m.start(2)] + want + "\n" + text[m.end(2):], encoding="utf-8")
    for s in stale:
        print(("stale " if check else "rewrote ") + s)
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
