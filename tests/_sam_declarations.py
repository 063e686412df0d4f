"""The SAM knobs as the source declares them outside :class:`~hf_adasam.sharpness.SAMConfig`, generated from it.

``SAMTrainingArguments``' ``sam_*`` fields (``hf_adasam/transformers_integration/arguments.py``) and ``SAM.__init__``'s
knob keywords (``hf_adasam/sharpness/sam.py``) are written out, so IDEs and type checkers see them; ``SAMConfig``
stays the one place for each knob's name, type, default and help. ``tests/test_sam_config.py`` fails when the
declarations and ``SAMConfig`` differ; then run, from the repository root::

    python -m tests._sam_declarations

which rewrites the two generated blocks (between their ``generated`` marker comments) from ``SAMConfig``.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from typing import Any

from hf_adasam.sharpness.config import SAMConfig

ROOT = Path(__file__).resolve().parents[1]
ARGUMENTS = ROOT / "hf_adasam" / "transformers_integration" / "arguments.py"
SAM = ROOT / "hf_adasam" / "sharpness" / "sam.py"
GENERATOR = "python -m tests._sam_declarations"
BEGIN = f"# generated from SAMConfig ({GENERATOR}; tests/test_sam_config.py checks it): begin"
END = "# generated: end"
WIDTH = 120


# -- what the declarations must say, from SAMConfig -----------------------------------------------------------------
def argument_type(f: dataclasses.Field) -> str:
    """A ``sam_*`` field's annotation: the knob's type, or ``None`` for "not given" (``HfArgumentParser`` reads a
    tuple knob as a list)."""
    like = f.metadata["like"]
    name = f"list[{type(like[0]).__name__}]" if isinstance(like, tuple) else type(like).__name__
    return f"{name} | None"


def argument_help(f: dataclasses.Field) -> str:
    """A ``sam_*`` field's help (``_sam_help`` appends the argparse marker that hides ``(default: None)``)."""
    return (f"{f.metadata['help']} Allowed: {f.metadata['allowed']}. Default: {SAMConfig.default_text(f.name)}. "
            f"Also optim_args key {f.name}.")


def is_flag(f: dataclasses.Field) -> bool:
    """A boolean knob: ``--sam_<knob>`` alone means true."""
    return isinstance(f.metadata["like"], bool)


def sam_knobs() -> tuple[dataclasses.Field, ...]:
    """``SAM(...)``'s knob keywords: every knob but the Trainer's own, each typed and defaulted as in SAMConfig."""
    return SAMConfig.knobs(trainer=False)


# -- the source text -----------------------------------------------------------------------------------------------
def _literal(value: Any) -> str:
    if isinstance(value, str) and '"' not in value and "\\" not in value:
        return f'"{value}"'
    return repr(value)


def _string_lines(text: str, room: int) -> list[str]:
    """``text`` as adjacent string literals of at most ``room`` characters each, split at spaces (each piece but the
    last ends with one)."""
    pieces, piece = [], ""
    for word in text.split(" "):
        candidate = f"{piece} {word}" if piece else word
        if piece and len(_literal(candidate + " ")) > room:
            pieces.append(piece + " ")
            piece = word
        else:
            piece = candidate
    pieces.append(piece)
    return [_literal(p) for p in pieces]


def argument_fields() -> str:
    """The ``sam_*`` fields of ``SAMArgumentsMixin`` (class-body indent)."""
    out = []
    for f in SAMConfig.knobs():
        head = f"    sam_{f.name}: {argument_type(f)} = dataclasses.field(default=None, metadata=_sam_help("
        tail = ", flag=True))" if is_flag(f) else "))"
        indent = " " * 8
        pieces = _string_lines(argument_help(f), WIDTH - len(indent) - len(tail))
        out.append(head)
        out.extend(f"{indent}{p}" for p in pieces[:-1])
        out.append(f"{indent}{pieces[-1]}{tail}")
    return "\n".join(out)


def sam_keywords() -> str:
    """``SAM.__init__``'s knob keywords (parameter-list indent)."""
    return "\n".join(f"        {f.name}: {f.type} = {_literal(f.default)}," for f in sam_knobs())


def _block(path: Path) -> tuple[str, re.Match]:
    text = path.read_text()
    m = re.search(rf"^( *){re.escape(BEGIN)}\n(.*?)^ *{re.escape(END)}\n", text, flags=re.S | re.M)
    if m is None:
        raise SystemExit(f"{path}: no generated block ({BEGIN!r} ... {END!r})")
    return text, m


def current(path: Path) -> str:
    """The generated block as it stands in ``path`` (between the markers, without them)."""
    return _block(path)[1].group(2).rstrip("\n")


def _write(path: Path, body: str) -> bool:
    text, m = _block(path)
    new = text[: m.start(2)] + body + "\n" + text[m.end(2):]
    if new != text:
        path.write_text(new)
    return new != text


def main() -> None:
    changed = [p for p, body in ((ARGUMENTS, argument_fields()), (SAM, sam_keywords())) if _write(p, body)]
    print("rewrote " + ", ".join(str(p.relative_to(ROOT)) for p in changed) if changed else "up to date")


if __name__ == "__main__":
    sys.exit(main())
