"""hf-adasam's logger: ``logging.getLogger("hf_adasam")`` with its own stderr handler at INFO (as Transformers
has for its own), so the lines a user must see (the SAM start-up line, a kernel that is compiling) show under
Transformers' default verbosity and in a plain PyTorch loop; ``logging.getLogger("hf_adasam").setLevel(...)``
quiets them."""

from __future__ import annotations

import logging

logger = logging.getLogger("hf_adasam")
if not logger.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
