r"""RAdam (Liu et al. ICLR 2020, "On the Variance of the Adaptive Learning Rate and Beyond", arXiv 1908.03265;
docs/algorithms.md#radam): ``torch.optim.RAdam``'s own math, run by hf-adasam's kernel runner.

:class:`RAdam` *is* a ``torch.optim.RAdam`` (a subclass): the same constructor, param-group keys, state
(``step`` a 0-d float tensor, ``exp_avg``, ``exp_avg_sq``) and ``state_dict``, so a checkpoint of either
loads into the other. Only ``step()`` differs: it hands each group's (params, grads, exp_avgs, exp_avg_sqs,
state_steps) to :func:`~hf_adasam.optim._base.run_kernel`, whose three impls run torch's own functions:

- ``"single"``: ``torch.optim.radam._single_tensor_radam``, exactly as ``torch.optim.RAdam(foreach=False)``;
- ``"foreach"``: ``torch.optim.radam._multi_tensor_radam``, exactly as ``torch.optim.RAdam(foreach=True)``;
- ``"compiled"``: the update of ``_single_tensor_radam`` in its capturable form (the rectified step selected by
  ``torch.where``, so one graph serves every step) compiled in one call over all of a bucket's tensors
  (hf-adasam's arena dispatch), with the step's scalars (1−β1^t, sqrt(1−β2^t), r_t and whether ρ_t > 5)
  computed once per step in Python float64, as torch's own non-capturable path computes them
  (:func:`step_scalars`; per tensor, on a float64 vector, when the tensors of a bucket are at different steps).
  Inside torch's function they would be recomputed in every element's loop, or realised as whole arrays. Its
  reference is ``torch.optim.RAdam``: within 1e-12 of the distance moved in float64 (tests/test_radam.py);
  the only arithmetic differences are the order of one product (``m̂·lr·(r_t·l_t)``, as in torch's capturable
  path) and the scalars' rounding to the parameters' dtype inside the loop. The state's step counts are
  incremented after the kernel (one foreach call). The group's constants (β1, β2, weight decay,
  ``decoupled_weight_decay``, ``maximize``) are Python values; ``lr``, ``eps`` and the step's scalars enter as
  0-d tensors (``run_kernel``'s rule), so neither a scheduled lr nor the step count recompiles; a scheduler that
  moves β (OneCycleLR's ``cycle_momentum``) does.

torch's private functions above are reached through :mod:`._compile`; where the installed torch lacks them,
``step()`` is ``torch.optim.RAdam.step`` itself, with a warning.

The compiled kernel reads p, g, m, v and writes p, m, v once per step (7 accesses per element: the
memory-traffic floor of an Adam-type update).

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

from ..sharding import local
from ._arena import PerTensor
from ._base import ImplChoice, resolve_impl, run_kernel
from ._compile import graph_capture_health_check, radam_init_group, radam_internals

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


class RAdam(ImplChoice, torch.optim.RAdam):
    """``torch.optim.RAdam`` whose step runs torch's RAdam kernels through hf-adasam's kernel runner.

    ``impl`` is ``"auto"``, ``"compiled"``, ``"foreach"`` or ``"single"`` (default: ``$HF_ADASAM_IMPL``, else
    ``"auto"``: :class:`~hf_adasam.optim._base.ImplChoice`); torch's ``foreach=True/False`` without ``impl``
    selects ``"foreach"``/``"single"``.
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
        if any(group["differentiable"] for group in self.param_groups) or radam_internals() is None:
            return super().step(closure)
        graph_capture_health_check(self)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad(), self.timed_step():
            for group in self.param_groups:
                self._step_group(group)
        return loss

    def _step_group(self, group: dict[str, Any]) -> None:
        params: list[Tensor] = []
        grads: list[Tensor] = []
        exp_avgs: list[Tensor] = []
        exp_avg_sqs: list[Tensor] = []
        steps: list[Tensor] = []
        has_complex = radam_init_group(self, group, params, grads, exp_avgs, exp_avg_sqs, steps)  # torch's own
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
                impl=self.kernel_impl,
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
    torch_single, _ = radam_internals()  # type: ignore[misc]
    torch_single(
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
    _, torch_multi = radam_internals()  # type: ignore[misc]
    torch_multi(
        params, grads, exp_avgs, exp_avg_sqs, state_steps,
        lr=lr, eps=eps, capturable=capturable, differentiable=False, **constants._asdict(),
    )


def step_scalars(t: Any, beta1: float, beta2: float) -> dict[str, Any]:
    """RAdam's per-step scalars at step ``t`` (after the increment), as torch's ``_single_tensor_radam`` computes them
    (a float: in Python, float64; an ``[N]`` float64 tensor: per tensor, the same formulas): 1 - β1^t,
    sqrt(1 - β2^t), the rectification r_t where ρ_t > 5 (else 0) and whether it applies (1 or 0)."""
    bias_correction1 = 1 - beta1**t
    bias_correction2 = 1 - beta2**t
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * t * (beta2**t) / bias_correction2
    ratio = (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
    if isinstance(t, Tensor):
        on = rho_t > 5.0
        return dict(bias_correction1=bias_correction1, bias_correction2_sqrt=bias_correction2**0.5,
                    rect=torch.where(on, ratio.clamp(min=0) ** 0.5, 0.0), rectified=on.to(t.dtype))
    on = rho_t > 5.0
    return dict(bias_correction1=bias_correction1, bias_correction2_sqrt=bias_correction2**0.5,
                rect=ratio**0.5 if on else 0.0, rectified=1.0 if on else 0.0)


def _compiled_radam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    *,
    lr: float | Tensor,
    eps: float | Tensor,
    constants: Constants,
    bias_correction1: Any,
    bias_correction2_sqrt: Any,
    rect: Any,
    rectified: Any,
) -> None:
    """The compiled impl's kernel: the update of torch's ``_single_tensor_radam`` in its capturable form (the
    rectified step selected by ``torch.where``), with the step's scalars computed once per step
    (:func:`step_scalars`) instead of inside every element's loop. ``torch.optim.RAdam`` is its reference
    (tests/test_radam.py: within 1e-12 in float64)."""
    beta1, beta2, weight_decay, decoupled, maximize, _ = constants
    for i, (param, grad, exp_avg, exp_avg_sq) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs, strict=True)):
        bc1, bc2_sqrt, r, on = (x[i] if isinstance(x, list) else x
                                for x in (bias_correction1, bias_correction2_sqrt, rect, rectified))
        grad = -grad if maximize else grad
        if weight_decay != 0:
            if decoupled:
                param.mul_(1 - lr * weight_decay)
            else:
                grad = grad.add(param, alpha=weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_corrected_exp_avg = exp_avg / bc1
        # sqrt(v) + eps rounded to the state's dtype, as torch's in-place add_ stores it (float16: eps = 1e-8 is
        # lost there, and a coordinate that never had a gradient becomes 0/0, as in torch.optim.RAdam)
        adaptive_lr = bc2_sqrt / exp_avg_sq.sqrt().add(eps).to(exp_avg_sq.dtype)
        update = torch.where(torch.as_tensor(on, device=param.device) > 0, r * adaptive_lr, 1.0)
        param.add_(bias_corrected_exp_avg * lr * update, alpha=-1.0)


# inductor computes float16/bfloat16 math in float32 and rounds only what it stores; torch's eager kernels round
# every op's result. Emulating those roundings keeps the compiled kernel on torch's float16 behaviour (the
# stored sqrt(v) + eps, above).
_INDUCTOR_OPTIONS = (("emulate_precision_casts", True),)


def radam(*tensors: list[Tensor], impl: str = "foreach", **hyperparams: Any) -> None:
    """Functional RAdam over lists (params, grads, exp_avgs, exp_avg_sqs, state_steps): torch's kernels."""
    constants: Constants = hyperparams["constants"]
    if impl != "compiled" or constants.has_complex:
        run_kernel("foreach" if impl == "compiled" else impl, _single_tensor_radam, _multi_tensor_radam, tensors,
                   hyperparams)
        return
    *lists, state_steps = tensors
    counts = torch.stack(state_steps).to(torch.float64)
    lo, hi = counts.aminmax()
    if counts.device.type == "cpu" and lo == hi:  # one step for the bucket (torch keeps the counts on the CPU)
        scalars = step_scalars(float(lo) + 1, constants.beta1, constants.beta2)
    else:
        scalars = {k: PerTensor(v) for k, v in step_scalars(counts + 1, constants.beta1, constants.beta2).items()}
    kernel = dict(lr=hyperparams["lr"], eps=hyperparams["eps"], constants=constants, **scalars)
    run_kernel(impl, _compiled_radam, _compiled_radam, lists, kernel, inductor=_INDUCTOR_OPTIONS)
    torch._foreach_add_(state_steps, 1)
