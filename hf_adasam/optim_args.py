"""``optim_args`` strings (``"key=value,key=value"``): split, and typed by a default's type.

Shared by the optimizer knobs (:mod:`hf_adasam.registry`) and the SAM knobs
(:class:`hf_adasam.sharpness.SAMConfig`), so one rule reads both: booleans ``true``/``false``,
tuples with ``:`` between entries (``betas=0.9:0.999``; ``,`` already separates the pairs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["convert", "format_value", "split_pairs"]

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def format_value(value: Any) -> str:
    """A value as ``optim_args`` writes it (``0.9:0.999`` for a tuple, ``true`` for True)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (tuple, list)):
        return ":".join(format_value(v) for v in value)
    return str(value)


def split_pairs(optim_args: str | Mapping[str, str] | None) -> dict[str, str]:
    """``"a=1, b=x"`` → ``{"a": "1", "b": "x"}``; a mapping passes through."""
    if not optim_args:
        return {}
    if not isinstance(optim_args, str):
        return dict(optim_args)
    pairs: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in optim_args.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"optim_args: {item!r} is not of the form key=value (pairs are separated by ',')")
        pairs[key.strip()] = value.strip()
    return pairs


def convert(raw: Any, like: Any) -> Any:
    """``raw`` (a string from the command line, or already a value) typed as ``like``; ``ValueError`` if it is not."""
    if not isinstance(raw, str):
        return raw
    if isinstance(like, bool):
        low = raw.strip().lower()
        if low not in _TRUE + _FALSE:
            raise ValueError(raw)
        return low in _TRUE
    if isinstance(like, int):
        return int(raw)
    if isinstance(like, tuple):
        parts = tuple(convert(x, like[0]) for x in raw.split(":"))
        if len(parts) != len(like):
            raise ValueError(raw)
        return parts
    if isinstance(like, str):
        return raw
    return float(raw)
