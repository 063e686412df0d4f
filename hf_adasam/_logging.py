"""hf-adasam's logger and warnings.

- ``logging.getLogger("hf_adasam")`` with its own stderr handler at INFO (as Transformers has for its own), so the
  lines a user must see (the SAM start-up line, a kernel that is compiling) show under Transformers' default
  verbosity and in a plain PyTorch loop; ``logging.getLogger("hf_adasam").setLevel(...)`` quiets them.
- :class:`HfAdasamWarning`: hf-adasam's warnings (a ``UserWarning``, so ``-W``/``warnings`` filters and
  ``pytest.warns(UserWarning)`` see them) print as one line, ``hf-adasam: warning: <message>``, without the source
  path and line Python shows by default (``warnings.formatwarning``, the documented hook; other warnings unchanged).
- :func:`is_main_process`: lines about the whole job (a kernel compiling) are printed by the main process only, not
  once per rank under torchrun.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

__all__ = ["HfAdasamWarning", "is_main_process", "logger"]

logger = logging.getLogger("hf_adasam")
if not logger.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def is_main_process() -> bool:
    """Rank 0 of the job: ``torch.distributed``'s rank once a process group exists, else torchrun's ``RANK``
    (unset: a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


class HfAdasamWarning(UserWarning):
    """A warning about the user's settings (e.g. a SAM knob that has no effect); shown as one line."""


def _format(message: Any, category: type[Warning], filename: str, lineno: int, line: str | None = None) -> str:
    if issubclass(category, HfAdasamWarning):
        return f"hf-adasam: warning: {message}\n"
    return _format.default(message, category, filename, lineno, line)  # type: ignore[attr-defined]


if not getattr(warnings.formatwarning, "hf_adasam", False):
    _format.default = warnings.formatwarning  # type: ignore[attr-defined]
    _format.hf_adasam = True  # type: ignore[attr-defined]
    warnings.formatwarning = _format
