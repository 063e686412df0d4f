"""No hidden copies: each optimizer keeps the state arrays its algorithm documents, and SAM's step keeps one copy
of w and allocates no other full copy.

The expected counts are the documented ones, stated in each registry entry (``OptimEntry.state`` in words,
``Variant.state_arrays`` as a count, written from the algorithm, not read off the code); the test counts the
tensors of the parameter's size in the real state after a dozen steps and compares.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import deque

import pytest
import torch

import hf_adasam
from hf_adasam.registry import variants

VARIANTS = variants()


def arrays(x: object, numel: int) -> int:
    """Tensors of the parameter's size in ``x`` (nested); step counters and per-tensor scalars are not arrays."""
    if isinstance(x, torch.Tensor):
        assert x.numel() in (1, numel), f"a state tensor of {x.numel()} elements for a {numel}-element param"
        return int(x.numel() == numel)
    if isinstance(x, (list, tuple, deque)):
        return sum(arrays(v, numel) for v in x)
    if isinstance(x, dict):
        return sum(arrays(v, numel) for v in x.values())
    return 0


@pytest.mark.parametrize("impl", ["single", "foreach"])
@pytest.mark.parametrize("case", list(VARIANTS))
def test_state_holds_the_documented_arrays(case: str, impl: str) -> None:
    entry, variant = VARIANTS[case]
    p = torch.zeros(6, 5, requires_grad=True)
    opt = hf_adasam.create_optimizer(entry.name, [p], lr=1e-3, **variant.knobs, impl=impl)
    for i in range(12):  # past AdaShift's window
        p.grad = torch.full_like(p, 1e-3 * (i + 1))
        opt.step()
    got = arrays(opt.state[p], p.numel())
    assert got == variant.state_arrays, f"{case}: {got} arrays; the registry documents {variant.state_arrays} " \
                                        f"({entry.state})"


CHILD = textwrap.dedent("""
    import json, torch, hf_adasam

    def kib(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

    n = 4_000_000
    p = torch.randn(n).requires_grad_()
    g = torch.randn(n) * 1e-3
    sam = hf_adasam.SAM(torch.optim.SGD([p], lr=1e-3), rho=0.05)

    def closure():
        p.grad = g.clone()
        return torch.zeros(())

    for _ in range(3):
        sam.zero_grad()
        sam.step(closure)
    sam.zero_grad()
    before = kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # peak RSS := current RSS
    sam.step(closure)
    print(json.dumps({"peak_copies": (kib("VmHWM") - before) * 1024 / (4 * n),
                      "held_copies": sam.sam.state_bytes / (4 * n)}))
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's peak-RSS reset")
def test_sam_step_keeps_one_copy_of_w_and_allocates_no_other() -> None:
    """In a fresh process whose glibc returns every large block to the OS at once (RSS = live tensors): during one
    SAM step over SGD the peak above the steady state is the two gradients (pass 1's, set aside, and pass 2's,
    which the closure allocates) plus rounding, not another copy of w."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, check=True, capture_output=True, text=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["held_copies"] == 1.0
    assert res["peak_copies"] < 2.5, res
