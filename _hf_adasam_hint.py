"""A hint for ``python script.py --optim adasam`` run without hf-adasam's launcher.

An unmodified Transformers script (``run_glue.py``, ...) builds plain ``TrainingArguments``, whose ``--optim`` choices
are Transformers' own names: argparse rejects ``adasam`` with the script's whole usage (100+ lines) and nothing says
that ``python -m hf_adasam run_glue.py ...`` runs it. No hf-adasam code runs in such a process unless Python's start-up
runs it, so ``hf_adasam_hint.pth`` (installed beside the package) has Python call :func:`install` at start-up when,
and only when, the command line has ``--optim``; every other process pays one scan of ``sys.argv``. :func:`install`
imports nothing heavy: it wraps ``argparse.ArgumentParser.error`` so that an "invalid choice" for ``--optim`` that is
one of hf-adasam's names becomes two lines (the error, and the launcher command to run instead) with argparse's exit
status 2. Any other argparse error, and every script that registers the names itself (``SAMTrainingArguments``, the
recipes, the launcher), is untouched.

This is a top-level module, not part of the ``hf_adasam`` package, so the start-up hook never imports torch.
"""

from __future__ import annotations

import re
import sys
from typing import Any

__all__ = ["hint", "install"]

_INVALID_OPTIM = re.compile(r"argument --optim: invalid choice: '([^']*)'")


def hint(message: str, argv: list[str]) -> str | None:
    """The lines that replace argparse's error ``message`` (None: not about one of hf-adasam's optim names)."""
    found = _INVALID_OPTIM.search(message)
    if found is None:
        return None
    from hf_adasam import OPTIMIZERS  # only now: the process is about to exit

    name = found.group(1)
    if name not in OPTIMIZERS:
        return None
    import shlex

    return (f"error: --optim {name} is an hf-adasam optimizer, which Transformers' TrainingArguments do not know.\n"
            f"hint: run the script through hf-adasam's launcher, which adds the names and the SAM step: "
            f"python -m hf_adasam {shlex.join(argv)}\n")


def install(argv: list[str] | None = None) -> None:
    """Wrap argparse's error reporting for this process (a script run as ``python script.py ... --optim ...``)."""
    argv = sys.argv if argv is None else argv
    if not argv or argv[0] in ("", "-c", "-m"):  # python -c / -m (the launcher itself) / interactive
        return
    try:
        import argparse
    except ImportError:  # pragma: no cover - a broken interpreter; never fail the start-up
        return
    original = argparse.ArgumentParser.error
    if getattr(original, "hf_adasam_hint", False):
        return

    def error(self: argparse.ArgumentParser, message: str) -> Any:
        try:
            text = hint(message, list(argv))
        except Exception:  # hf-adasam broken or missing: argparse's own report
            text = None
        if text is None:
            return original(self, message)
        self.exit(2, f"{self.prog}: {text}")

    error.hf_adasam_hint = True  # type: ignore[attr-defined]
    argparse.ArgumentParser.error = error  # type: ignore[method-assign]
