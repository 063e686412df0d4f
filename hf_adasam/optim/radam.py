r"""RAdam (Liu et al. ICLR 2020, "On the Variance of the Adaptive Learning Rate and Beyond", arXiv 1908.03265;
spec §5): ``torch.optim.RAdam``'s own math, run by hf-adasam's kernel runner.

:class:`RAdam` *is* a ``torch.optim.RAdam`` (a subclass): the same constructor, param-group keys, state
(``step`` a 0-d float tensor, ``exp_avg``, ``exp_avg_sq``) and ``state_dict``, so a checkpoint of either
loads into the other. Only ``step()`` differs: it hands each group's (params, grads, exp_avgs, exp_avg_sqs,
state_steps) to :func:`~hf_adasam.optim._base.run_kernel`, whose three impls run torch's own functions:

- ``"single"``: ``torch.optim.radam._single_tensor_radam``, exactly as ``torch.optim.RAdam(foreach=False)``;
- ``"foreach"``: ``torch.optim.radam._multi_tensor_radam``, exactly as ``torch.optim.RAdam(foreach=True)``;
- ``"compiled"``: ``_single_tensor_radam`` under ``torch.compile``, in one call over all of a bucket's tensors
  (hf-adasam's arena dispatch), with two arguments set so that it traces into one graph for every step:

  * ``capturable=True``. The non-capturable path reads the step count into Python and branches on
    ρ_t > 5 (a branch dynamo cannot trace on a tensor, and a Python step would recompile every step);
    torch's capturable path computes the same quantities from the step *tensor* and selects with
    ``torch.where``. The only arithmetic difference is the order of one product:
    ``m̂·lr·(r_t·l_t)`` instead of ``m̂·lr·l_t·r_t`` (≤ 1 ulp per step; nothing changes on the first,
    unrectified steps).
  * the step count as a float64 tensor: 0-d when every tensor of the bucket is at the same step (as in
    ordinary training: then the step's scalars promote as torch's Python scalars do), else one per tensor.
    ``state["step"]`` is float32, as torch stores it; in float32 the capturable path would compute 1−β^t and
    ρ_t in float32, where torch's reference computes them in Python (float64). The kernel increments copies;
    the state's counts are incremented after it (one foreach call).

  The group's constants (β1, β2, weight decay, ``decoupled_weight_decay``, ``maximize``) reach torch's
  function as Python values (:class:`Constants`): it branches on ``weight_decay != 0`` and passes ``1 − β2``
  as ``addcmul_``'s Python ``value``. ``lr`` and ``eps`` enter as 0-d tensors (``run_kernel``'s rule), so a
  scheduled lr does not recompile; a scheduler that moves β (OneCycleLR's ``cycle_momentum``) does.

The compiled kernel reads p, g, m, v and writes p, m, v once per step (7 accesses per element: the
memory-traffic floor of an Adam-type update), with the step's scalars computed once per tensor
(:data:`_INDUCTOR_CONFIG`).

float16 parameters: torch's ε = 1e-8 underflows to 0 in float16, so a coordinate whose gradient is always zero
becomes 0/0 = NaN once the rectified steps start (step 6 for β2 = 0.999), in every impl, as in
``torch.optim.RAdam`` (``tests/test_kernel_net.py``). Prefer float32 weights, or ``optim_args="eps=1e-4"``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.optim import radam as _torch_radam

from ..sharding import local
from ._arena import PerTensor
from ._base import resolve_impl, run_kernel

__all__ = ["Constants", "RAdam", "radam"]


class Constants(NamedTuple):
    """A group's RAdam constants, as Python values (``run_kernel`` turns plain float hyperparameters into 0-d
    tensors; torch's kernel branches on these and passes them where it wants Python numbers)."""

    beta1: float
    beta2: float
    weight_decay: float
    decoupled_weight_decay: bool
    maximize: bool
    has_complex: bool = False


class RAdam(torch.optim.RAdam):
    """``torch.optim.RAdam`` whose step runs torch's RAdam kernels through hf-adasam's kernel runner.

    ``impl`` is ``"compiled"``, ``"foreach"`` or ``"single"`` (default: ``$HF_ADASAM_IMPL``, else
    ``"compiled"``); torch's ``foreach=True/False`` without ``impl`` selects ``"foreach"``/``"single"``.
    ``differentiable=True`` runs ``torch.optim.RAdam.step`` itself.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        impl: str | None = None,
    ) -> None:
        if impl is None and foreach is not None:
            impl = "foreach" if foreach else "single"
        self.impl = resolve_impl(impl)
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
            foreach=foreach,
            maximize=maximize,
            capturable=capturable,
            differentiable=differentiable,
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("impl", resolve_impl(None))

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        if any(group["differentiable"] for group in self.param_groups):
            return super().step(closure)
        self._accelerator_graph_capture_health_check()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            for group in self.param_groups:
                self._step_group(group)
        return loss

    def _step_group(self, group: dict[str, Any]) -> None:
        params: list[Tensor] = []
        grads: list[Tensor] = []
        exp_avgs: list[Tensor] = []
        exp_avg_sqs: list[Tensor] = []
        steps: list[Tensor] = []
        has_complex = self._init_group(group, params, grads, exp_avgs, exp_avg_sqs, steps)  # torch's own
        if not params:
            return
        beta1, beta2 = group["betas"]
        constants = Constants(float(beta1), float(beta2), float(group["weight_decay"]),
                              bool(group["decoupled_weight_decay"]), bool(group["maximize"]), has_complex)
        lr = group["lr"]
        if isinstance(lr, Tensor) and not group["capturable"]:
            lr = float(lr)  # read once per step, as a float: a scheduler's tensor lr compiles no new graph
        # one kernel call per (device, dtype): what run_kernel's impls assume of a list
        buckets: dict[tuple[Any, ...], list[int]] = defaultdict(list)
        for i, p in enumerate(params):
            buckets[(p.device, p.dtype)].append(i)
        for idx in buckets.values():
            radam(
                [local(params[i]) for i in idx],
                [local(grads[i]) for i in idx],
                [local(exp_avgs[i]) for i in idx],
                [local(exp_avg_sqs[i]) for i in idx],
                [steps[i] for i in idx],
                lr=lr,
                eps=group["eps"],
                constants=constants,
                capturable=bool(group["capturable"]),
                impl=self.impl,
            )


def _single_tensor_radam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor,
    eps: float | Tensor,
    constants: Constants,
    capturable: bool = False,
) -> None:
    """``torch.optim.radam._single_tensor_radam``, as ``torch.optim.RAdam(foreach=False)`` calls it."""
    _torch_radam._single_tensor_radam(
        params, grads, exp_avgs, exp_avg_sqs, state_steps,
        lr=lr, eps=eps, capturable=capturable, differentiable=False, **constants._asdict(),
    )


def _multi_tensor_radam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor,
    eps: float | Tensor,
    constants: Constants,
    capturable: bool = False,
) -> None:
    """``torch.optim.radam._multi_tensor_radam``, as ``torch.optim.RAdam(foreach=True)`` calls it."""
    _torch_radam._multi_tensor_radam(
        params, grads, exp_avgs, exp_avg_sqs, state_steps,
        lr=lr, eps=eps, capturable=capturable, differentiable=False, **constants._asdict(),
    )


def _step_copies(step: Any, n: int) -> list[Tensor]:
    """Float64 copies of the current step count, one per tensor (or block): torch's functions increment them."""
    if isinstance(step, list):
        return [s.to(torch.float64, copy=True) for s in step]
    return [torch.as_tensor(step, dtype=torch.float64).clone() for _ in range(n)]


def _compiled_radam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    *,
    step: Any,
    lr: float | Tensor,
    eps: float | Tensor,
    constants: Constants,
    capturable: bool = False,
) -> None:
    """The compiled impl's kernel: torch's ``_single_tensor_radam`` in its capturable form (under
    ``torch.compile``; eager, its plain form) on float64 copies of the step count, which it increments; the state's
    step counts are incremented by the caller. ``step``: every tensor's current count (a float: the same for all,
    then the step's scalars promote like Python scalars, as in torch's eager math), or one per tensor."""
    _torch_radam._single_tensor_radam(
        params, grads, exp_avgs, exp_avg_sqs, _step_copies(step, len(params)),
        lr=lr, eps=eps, capturable=capturable or torch.compiler.is_compiling(), differentiable=False,
        **constants._asdict(),
    )


def _compiled_radam_fallback(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    *,
    step: Any,
    lr: float | Tensor,
    eps: float | Tensor,
    constants: Constants,
    capturable: bool = False,
) -> None:
    """:func:`_compiled_radam`'s foreach twin (tensors the arena cannot take, or no compiler)."""
    _torch_radam._multi_tensor_radam(
        params, grads, exp_avgs, exp_avg_sqs, _step_copies(step, len(params)),
        lr=lr, eps=eps, capturable=capturable, differentiable=False, **constants._asdict(),
    )


# Inductor inlines a pointwise value into each of its consumers unless a heuristic realizes it. The step's
# scalars (β^t by two float64 pow, ρ_t, r_t, sqrt(1-β2^t): 0-d tensors read by every element) fall under
# the CPU heuristic's thresholds, so by default every vector iteration of the element loop recomputes them
# (4.2M float32 params: 116 ms a step against 17 ms with this setting). Realizing every reused pointwise value
# computes them once per tensor; the element-wise values that are reused stay fused in the same loop (the
# generated code allocates only 0-d buffers). Set whenever RAdam's kernel compiles (and only then).
_INDUCTOR_OPTIONS = (("realize_opcount_threshold", 0),)


def radam(*tensors: list[Tensor], impl: str = "foreach", **hyper: Any) -> None:
    """Functional RAdam over lists (params, grads, exp_avgs, exp_avg_sqs, state_steps): torch's kernels."""
    if impl != "compiled":
        run_kernel(impl, _single_tensor_radam, _multi_tensor_radam, tensors, hyper)
        return
    *lists, state_steps = tensors
    counts = torch.stack([s.reshape(()) for s in state_steps])
    if counts.device.type == "cpu" and bool((counts == counts[0]).all()):  # (torch keeps them on the CPU)
        step: Any = float(counts[0])
    else:
        step = PerTensor(counts.to(torch.float64))
    run_kernel(impl, _compiled_radam, _compiled_radam_fallback, lists, dict(hyper, step=step),
               inductor=_INDUCTOR_OPTIONS)
    torch._foreach_add_(state_steps, 1)
