"""The differential net's harness: every optimizer variant, in every impl and parameter dtype, run on a
random problem and compared with the float64 single-tensor path on the same inputs. The variants are the
registry's (``hf_adasam.registry.OptimEntry.variants``): a registered optimizer is in the net by being registered.

The reference is the plain single-tensor loop in float64, the form closest to the formulas of
docs/algorithms.md; its hand-computed test vectors (tests per optimizer) tie that loop to the math. A deviation
is measured relative to how far the reference moved the weights: ``max |x - x_ref| / max |x_ref - x_0|`` over every
element of every parameter (a per-tensor relative error means nothing for a tensor that should not move).

``python -m tests._kernel_net`` prints the table of largest deviations (variant x impl x dtype).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from hf_adasam import registry

IMPLS = ("single", "foreach", "compiled")
# where the optimizers run (the float64 reference always runs on the CPU): `HF_ADASAM_NET_DEVICE=cuda pytest
# tests/test_kernel_net.py` is the net on a GPU
DEVICE = torch.device(os.environ.get("HF_ADASAM_NET_DEVICE", "cpu"))
DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
STEPS = 12
WD = 0.05  # group 0 decays, group 1 does not


@dataclass(frozen=True)
class Variant:
    """A registered optimizer with one choice of knobs; ``build(groups, impl)`` makes it."""

    optim: str  # the registered ``optim=`` name it exercises
    lr: float
    build: Callable[[list[dict], str], torch.optim.Optimizer]
    impls: tuple[str, ...] = IMPLS


def _variant(entry: registry.OptimEntry, variant: registry.Variant) -> Variant:
    def build(groups: list[dict], impl: str) -> torch.optim.Optimizer:
        return registry.create_optimizer(entry.name, groups, lr=entry.lr, impl=impl, **variant.knobs)

    return Variant(entry.name, entry.lr, build)


# every knob setting of every registered optimizer, at the entry's lr: adasam, adasam_bias_correction, ...
VARIANTS: dict[str, Variant] = {name: _variant(e, v) for name, (e, v) in registry.variants().items()}

# The two groups hold tensors of the same shapes (a 0-d tensor enters a compiled kernel as a 1-element
# view), so both groups run one compiled graph per variant and dtype: half the compile time.
SHAPES: tuple[tuple[int, ...], ...] = ((3, 4), (), (5, 2), (3, 4), (1,), (5, 2))
GROUP0 = 3  # params[:3] are group 0 (weight decay), the rest group 1 (none, half the lr)


@dataclass
class Problem:
    """Initial weights and the gradient of every step (``None``: the param has no gradient that step)."""

    x0: list[Tensor]
    grads: list[list[Tensor | None]]
    noncontiguous: bool = False
    groups: int = 2

    def cast(self, dtype: torch.dtype) -> Problem:
        """The same problem with every value rounded to ``dtype`` (and held in float64)."""

        def r(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(dtype).to(torch.float64, copy=True)

        return replace(self, x0=[r(x) for x in self.x0], grads=[[r(g) for g in gs] for gs in self.grads])


def random_problem(seed: int = 0, steps: int = STEPS, shapes: Sequence[tuple[int, ...]] = SHAPES,
                   scale: float = 1.0) -> Problem:
    g = torch.Generator().manual_seed(seed)
    x0 = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    grads = [[torch.randn(s, generator=g, dtype=torch.float64) * scale for s in shapes] for _ in range(steps)]
    return Problem(x0, grads)


def _leaf(x: Tensor, dtype: torch.dtype, noncontiguous: bool, device: torch.device | None = None) -> Tensor:
    device = DEVICE if device is None else device
    x = x.to(device, dtype, copy=True)  # never the problem's own tensor: the optimizer writes into it
    if noncontiguous and x.dim() >= 1 and x.numel() > 1:
        if x.dim() >= 2:  # a transposed view
            x = x.transpose(0, 1).contiguous().transpose(0, 1)
        else:  # every other element of a buffer twice as long
            buf = torch.zeros(2 * x.numel(), dtype=dtype, device=x.device)
            buf[::2] = x
            x = buf[::2]
        assert not x.is_contiguous()
    return x.requires_grad_()


def _grad(g: Tensor, dtype: torch.dtype, noncontiguous: bool, device: torch.device) -> Tensor:
    g = g.to(device, dtype, copy=True)
    if noncontiguous and g.dim() >= 2:
        g = g.transpose(0, 1).contiguous().transpose(0, 1)
    return g


def lr_at(base: float, group: int, t: int) -> float:
    """The schedule: a different lr every step, group 1 at half of group 0's."""
    return base * (1 + 0.5 * math.cos(t)) * (0.5 if group else 1.0)


def param_groups(params: list[Tensor], lr: float, groups: int = 2) -> list[dict]:
    if groups == 1:
        return [{"params": params, "lr": lr, "weight_decay": WD}]
    return [{"params": params[:GROUP0], "lr": lr, "weight_decay": WD},
            {"params": params[GROUP0:], "lr": lr / 2, "weight_decay": 0.0}]


def build(name: str, params: list[Tensor], impl: str, groups: int = 2) -> torch.optim.Optimizer:
    v = VARIANTS[name]
    return v.build(param_groups(params, v.lr, groups), impl)


def run(name: str, impl: str, dtype: torch.dtype, problem: Problem, *, steps: slice = slice(None),
        params: list[Tensor] | None = None, opt: torch.optim.Optimizer | None = None,
        device: torch.device | None = None) -> tuple[list[Tensor], torch.optim.Optimizer]:
    """Run ``problem``'s steps (a slice of them) and return the params (in ``dtype``) and the optimizer."""
    if params is None:
        params = [_leaf(x, dtype, problem.noncontiguous, device) for x in problem.x0]
    if opt is None:
        opt = build(name, params, impl, problem.groups)
    base = VARIANTS[name].lr
    first = steps.start or 0
    for t, gs in enumerate(problem.grads[steps], start=first + 1):
        for k, group in enumerate(opt.param_groups):
            group["lr"] = lr_at(base, k, t)
        for p, g in zip(params, gs, strict=True):
            p.grad = None if g is None else _grad(g, dtype, problem.noncontiguous, p.device)
        opt.step()
    return params, opt


def reference(name: str, problem: Problem, dtype: torch.dtype) -> list[Tensor]:
    """The float64 single-tensor path on ``problem`` rounded to ``dtype`` (the inputs the other run saw)."""
    cast = replace(problem.cast(dtype), noncontiguous=False)
    params, _ = run(name, "single", torch.float64, cast, device=torch.device("cpu"))
    return [p.detach() for p in params]


def distance(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    """max |a - b| over every element of every tensor (``a`` on any device and dtype, ``b`` float64 on the CPU)."""
    return max((x.detach().cpu().double() - y).abs().max().item() if x.numel() else 0.0
               for x, y in zip(a, b, strict=True))


def deviation(got: Sequence[Tensor], ref: Sequence[Tensor], x0: Sequence[Tensor]) -> float:
    """max |x - x_ref| relative to max |x_ref - x_0| over all elements (inf if a value is not finite)."""
    err, moved = distance(got, ref), distance(ref, x0)
    if not math.isfinite(err):
        return math.inf
    return err / moved if moved > 0 else (0.0 if err == 0 else math.inf)


def measure(name: str, impl: str, dtype: torch.dtype, problem: Problem | None = None) -> float:
    problem = problem or random_problem()
    params, _ = run(name, impl, dtype, problem)
    x0 = problem.cast(dtype).x0
    return deviation(params, reference(name, problem, dtype), x0)


if __name__ == "__main__":  # the closing note's table
    import time

    names = list(VARIANTS)
    print("| variant | impl | " + " | ".join(str(d).removeprefix("torch.") for d in DTYPES) + " |")
    print("|---|---|" + "---:|" * len(DTYPES))
    start = time.perf_counter()
    for name in names:
        for impl in VARIANTS[name].impls:
            cells = [f"{measure(name, impl, d):.1e}" for d in DTYPES]
            print(f"| {name} | {impl} | " + " | ".join(cells) + " |", flush=True)
    print(f"({time.perf_counter() - start:.0f} s)")
