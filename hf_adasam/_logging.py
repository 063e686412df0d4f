"""hf-adasam's logger: ``logging.getLogger("hf_adasam")`` with its own stderr handler at INFO (as Transformers
has for its own), so the lines a user must see (the SAM start-up line, a kernel that is compiling) show under
Transformers' default verbosity and in a plain PyTorch loop; ``logging.getLogger("hf_adasam").setLevel(...)``
quiets them. Lines about the whole job (a kernel compiling) are printed by the main process only
(:func:`is_main_process`), not once per rank under torchrun."""

from __future__ import annotations

import logging
import os

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
