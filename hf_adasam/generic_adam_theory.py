r"""Generic Adam's sufficient condition, checked numerically, and Reddi et al.'s counterexample (docs/theory.md).

Zou, Shen, Jie, Zhang & Liu (CVPR 2019, "A Sufficient Condition for Convergences of Adam and
RMSProp", arXiv 1811.09358) show that Generic Adam (:class:`hf_adasam.optim.GenericAdam`)
converges when (docs/theory.md#the-condition; reconstructed, not read from the paper's text):

1. :math:`0 \le \beta_t \le \beta < 1`;
2. :math:`0 \le \theta_t < 1`, non-decreasing, and :math:`\beta^2 < \lim \theta_t`;
3. :math:`\chi_t = \alpha_t/\sqrt{1-\theta_t}` is almost non-increasing (bounded ratio to its running
   minimum);
4. :math:`\sum_{t\le T} \alpha_t\sqrt{1-\theta_t} = o(T\alpha_T)`.

:func:`check_sufficient_condition` evaluates each one on :math:`t = 1..T` for the horizons given
(numpy, vectorised; 1e5 terms take milliseconds). Asymptotic statements need a finite-horizon
criterion; the ones used here are:

* (1), (2): checked on every :math:`t` up to the largest horizon, with :math:`\theta` at that
  horizon as the estimate of :math:`\lim\theta_t` and :math:`\max_t\beta_t` as :math:`\beta`; (1)
  also fails when :math:`1-\max_{t\le T}\beta_t` keeps shrinking across the horizons towards 0 (same
  extrapolation as (4)), i.e. :math:`\beta_t \to 1`.
* (3): the figure is :math:`\max_{t\le T} \chi_t / \min_{s\le t}\chi_s` at each horizon. It holds when
  that figure is at most ``chi_ratio_bound`` (default 10) at the largest horizon *and* grew by at
  most a factor ``1 + chi_growth_tol`` (default 1%) between the last two horizons, i.e. it has
  stopped growing.
* (4): the figure is :math:`R(T) = \sum_{t\le T}\alpha_t\sqrt{1-\theta_t} / (T\alpha_T)` at each
  horizon. It holds when :math:`R` decreases strictly across the horizons and its extrapolated limit
  is at most ``limit_tol`` (default 0.1) times its last value. The limit :math:`L` comes from fitting
  :math:`R = L + cT^{-p}` through the last three horizons (Aitken's :math:`\Delta^2` at geometric
  horizons); any power-law decay to 0 gives :math:`L \le 0`, while a ratio that levels off at a
  positive value gives :math:`L \approx` that value, even when it is still falling at :math:`10^5`
  (:math:`\theta_t = \min(0.999, 1-1/t)` gives :math:`L = 0.0632 = 2\sqrt{0.001}`, its true limit).
  A decay slower than any power (:math:`1/\log T`) is reported as failing.

This definition of :math:`R` reproduces the figures of docs/theory.md#tests: :math:`\alpha_t=\alpha/\sqrt t,
\theta_t=1-0.9/t` gives 0.225, 0.093, 0.036 at :math:`T = 10^3, 10^4, 10^5` (:math:`\sqrt{0.9}\,
H_T/\sqrt T`), and a constant :math:`\theta=0.999` gives 0.0618, 0.0627, 0.0631, rising towards
:math:`2\sqrt{0.001} = 0.0632`.

:func:`reddi_counterexample` runs Adam, AMSGrad and Generic Adam with :math:`\theta_t = 1-1/t` on
Reddi, Kale & Kumar's (ICLR 2018, "On the Convergence of Adam and Beyond") online problem.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch

from .optim.adasam import AdaSAM
from .optim.generic_adam import GenericAdam, alpha_schedule, theta_schedule

__all__ = [
    "Condition",
    "PolynomialRate",
    "ReddiResult",
    "SufficientConditionReport",
    "check_sufficient_condition",
    "generic_adam_schedules",
    "polynomial_rate",
    "reddi_counterexample",
]

Schedule = float | Callable[[int], float]


# ----------------------------------------------------------------------------------------------
# the sufficient condition
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Condition:
    """One of conditions (1)–(4): whether it holds, the figures measured, and why."""

    name: str
    holds: bool
    figures: dict[str, float | tuple[float, ...]]
    explanation: str


@dataclasses.dataclass(frozen=True)
class SufficientConditionReport:
    """Conditions (1)–(4) of docs/theory.md#the-condition evaluated up to ``horizons[-1]``."""

    horizons: tuple[int, ...]
    momentum: Condition  # (1)
    second_moment: Condition  # (2)
    chi: Condition  # (3)
    step_sum: Condition  # (4)

    @property
    def conditions(self) -> tuple[Condition, Condition, Condition, Condition]:
        return (self.momentum, self.second_moment, self.chi, self.step_sum)

    @property
    def all_hold(self) -> bool:
        return all(c.holds for c in self.conditions)

    def __str__(self) -> str:
        width = max(len(c.name) for c in self.conditions)
        lines = [f"Generic Adam sufficient condition, horizons T = {', '.join(f'{t:g}' for t in self.horizons)}"]
        for c in self.conditions:
            lines.append(f"  {c.name:<{width}}  {'holds' if c.holds else 'FAILS'}  {c.explanation}")
        lines.append(f"  all conditions hold: {self.all_hold}")
        return "\n".join(lines)


def _evaluate(schedule: Schedule, t: np.ndarray) -> np.ndarray:
    """``schedule`` at steps ``t`` (float64): a constant, a vectorised callable, or a scalar callable."""
    if not callable(schedule):
        return np.full(t.shape, float(schedule))
    try:
        with np.errstate(all="ignore"):
            values = np.broadcast_to(np.asarray(schedule(t), dtype=np.float64), t.shape)
        return np.array(values)
    except Exception:  # not vectorisable (math.sqrt, min, an if on t, ...): call it once per step
        return np.fromiter((schedule(int(s)) for s in t), dtype=np.float64, count=t.size)


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def _power_law_limit(horizons: Sequence[int], ratios: Sequence[float]) -> tuple[float, float]:
    """``(L, p)`` of ``R = L + c T^-p`` through the last three points of a strictly decreasing ``R(T)``.

    ``L = -inf`` when the decrease does not slow down like any power (``R`` falls at least linearly
    in ``log T``, so it crosses 0).
    """
    (t1, t2, t3), (r1, r2, r3) = horizons[-3:], ratios[-3:]
    q = (r1 - r2) / (r2 - r3)

    def shrink(p: float) -> float:  # (t1^-p - t2^-p) / (t2^-p - t3^-p), increasing in p
        return ((t2 / t1) ** p - 1.0) / (1.0 - (t2 / t3) ** p)

    if q <= math.log(t2 / t1) / math.log(t3 / t2):  # shrink(0+)
        return -math.inf, 0.0
    lo, hi = 0.0, 1.0
    while shrink(hi) < q and hi < 256:
        lo, hi = hi, 2 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if shrink(mid) < q else (lo, mid)
    p = 0.5 * (lo + hi)
    c = (r2 - r3) / (t2**-p - t3**-p)
    return r3 - c * t3**-p, p


def check_sufficient_condition(
    alpha: Schedule,
    theta: Schedule,
    beta: Schedule,
    horizons: Sequence[int] = (1_000, 10_000, 100_000),
    *,
    chi_ratio_bound: float = 10.0,
    chi_growth_tol: float = 0.01,
    limit_tol: float = 0.1,
    monotone_tol: float = 1e-12,
) -> SufficientConditionReport:
    """Evaluate conditions (1)–(4) of docs/theory.md#the-condition for step sizes ``alpha``, ``theta`` and ``beta``.

    Each schedule is a constant or a callable ``t -> value`` for steps ``t = 1, 2, ...``; a callable
    is first tried on a float64 numpy array of steps and called once per step if that fails. The
    numerical criteria for the asymptotic conditions are those of the module docstring;
    ``monotone_tol`` is the decrease of ``θ_t`` between two steps still read as rounding. Condition
    (4) fits the last three horizons, so at least three are needed.
    """
    horizons = tuple(int(h) for h in horizons)
    if len(horizons) < 3 or horizons[0] < 1 or any(b <= a for a, b in itertools.pairwise(horizons)):
        raise ValueError(f"Invalid horizons: {horizons!r}; expected at least 3 strictly increasing steps >= 1")
    if not chi_ratio_bound >= 1:
        raise ValueError(f"Invalid chi_ratio_bound: {chi_ratio_bound!r}; allowed range is [1, inf)")
    if not chi_growth_tol >= 0:
        raise ValueError(f"Invalid chi_growth_tol: {chi_growth_tol!r}; allowed range is [0, inf)")
    if not 0 <= limit_tol < 1:
        raise ValueError(f"Invalid limit_tol: {limit_tol!r}; allowed range is [0, 1)")

    t = np.arange(1, horizons[-1] + 1, dtype=np.float64)
    alpha_t, theta_t, beta_t = (_evaluate(s, t) for s in (alpha, theta, beta))
    idx = np.array(horizons) - 1
    h_max = f"t <= {horizons[-1]:g}"

    # (1) 0 <= beta_t <= beta < 1: sup beta_t must stay away from 1, so the gap 1 - max_(t<=T) beta_t
    # must not be shrinking towards 0 (the extrapolation used for (4))
    b_min, b_max = float(beta_t.min()), float(beta_t.max())
    gap = [float(x) for x in 1.0 - np.maximum.accumulate(beta_t)[idx]]
    gap_shrinks = bool(np.all(np.diff(gap) < 0))
    gap_limit = _power_law_limit(horizons, gap)[0] if gap_shrinks else gap[-1]
    c1 = Condition(
        "(1) 0 <= beta_t <= beta < 1",
        bool(b_min >= 0 and b_max < 1 and gap_limit > limit_tol * gap[-1]),
        {"beta_min": b_min, "beta": b_max, "gap_limit_estimate": gap_limit},
        f"beta_t in [{_fmt(b_min)}, {_fmt(b_max)}] for {h_max}"
        + (f"; 1 - max beta_t extrapolates to {_fmt(gap_limit)}" if gap_shrinks else ""),
    )

    # (2) 0 <= theta_t < 1, non-decreasing, beta^2 < lim theta_t (estimated by theta at the last horizon)
    th_min, th_max = float(theta_t.min()), float(theta_t.max())
    drop = float(np.max(theta_t[:-1] - theta_t[1:], initial=0.0))
    th_lim = float(theta_t[-1])
    c2 = Condition(
        "(2) 0 <= theta_t < 1 non-decreasing, beta^2 < lim theta_t",
        bool(th_min >= 0 and th_max < 1 and drop <= monotone_tol and b_max**2 < th_lim),
        {
            "theta_min": th_min,
            "theta_max": th_max,
            "largest_decrease": drop,
            "theta_limit": th_lim,
            "beta_sq": b_max**2,
        },
        f"theta_t in [{_fmt(th_min)}, {_fmt(th_max)}], largest decrease {_fmt(drop)}, "
        f"beta^2 = {_fmt(b_max**2)} vs theta_T = {_fmt(th_lim)}",
    )

    # (3) chi_t = alpha_t / sqrt(1 - theta_t) almost non-increasing: bounded ratio to its running minimum
    with np.errstate(divide="ignore", invalid="ignore"):
        chi = alpha_t / np.sqrt(1.0 - theta_t)
        chi_ratio = np.maximum.accumulate(chi / np.minimum.accumulate(chi))[idx]
    growth = float(chi_ratio[-1] / chi_ratio[-2])
    c3 = Condition(
        "(3) chi_t almost non-increasing",
        bool(np.all(np.isfinite(chi_ratio)) and chi_ratio[-1] <= chi_ratio_bound and growth <= 1 + chi_growth_tol),
        {"chi_ratio": tuple(float(x) for x in chi_ratio), "growth": growth},
        f"max chi_t / min_(s<=t) chi_s = {', '.join(_fmt(x) for x in chi_ratio)} "
        f"(bound {chi_ratio_bound:g}, last growth x{_fmt(growth)}, allowed x{_fmt(1 + chi_growth_tol)})",
    )

    # (4) sum_{t<=T} alpha_t sqrt(1 - theta_t) = o(T alpha_T): R(T) decreasing, extrapolating to <= 0
    with np.errstate(divide="ignore", invalid="ignore"):
        partial = np.cumsum(alpha_t * np.sqrt(np.clip(1.0 - theta_t, 0.0, None)))[idx]
        ratio = [float(x) for x in partial / (np.array(horizons, dtype=np.float64) * alpha_t[idx])]
    decreasing = bool(np.all(np.isfinite(ratio)) and np.all(np.diff(ratio) < 0))
    limit, p = _power_law_limit(horizons, ratio) if decreasing else (math.nan, math.nan)
    c4 = Condition(
        "(4) sum alpha_t sqrt(1-theta_t) = o(T alpha_T)",
        bool(decreasing and limit <= limit_tol * ratio[-1]),
        {"ratio": tuple(ratio), "limit_estimate": limit, "decay_exponent": p},
        f"ratio {', '.join(_fmt(x) for x in ratio)}"
        + (
            f"; fit L + c*T^-p: L = {_fmt(limit)} (needs <= {_fmt(limit_tol * ratio[-1])}), p = {_fmt(p)}"
            if decreasing
            else "; not decreasing"
        ),
    )
    return SufficientConditionReport(horizons, c1, c2, c3, c4)


def generic_adam_schedules(
    lr: float, theta: float, theta_power: float = 0.0, lr_power: float = 0.0
) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]:
    """``(alpha, theta)`` schedules of :class:`~hf_adasam.optim.GenericAdam`'s knobs, for the checker."""
    return (lambda t: alpha_schedule(t, lr, lr_power)), (lambda t: theta_schedule(t, theta, theta_power))


@dataclasses.dataclass(frozen=True)
class PolynomialRate:
    r"""The paper's statement for :math:`\alpha_t = \alpha/t^s`, :math:`\theta_t = 1-\theta/t^r`."""

    s: float
    r: float
    holds: bool  # 0 < r <= 2s < 2
    rate_exponent: float  # the bound is O(T^-rate_exponent)

    def __str__(self) -> str:
        verdict = "holds" if self.holds else "does not hold"
        return (
            f"alpha_t = alpha/t^{self.s:g}, theta_t = 1 - theta/t^{self.r:g}: 0 < r <= 2s < 2 {verdict}; "
            f"rate O(T^-{self.rate_exponent:g})"
        )


def polynomial_rate(s: float, r: float) -> PolynomialRate:
    """Whether ``0 < r <= 2s < 2`` and the rate ``O(T^-min(1-s, r/2))`` for the polynomial family."""
    return PolynomialRate(float(s), float(r), bool(0 < r <= 2 * s < 2), min(1.0 - s, r / 2.0))


# ----------------------------------------------------------------------------------------------
# Reddi et al.'s counterexample
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ReddiResult:
    """Trajectories ``x[k]`` after ``k`` steps (``x[0] = x0``) of each method."""

    adam: np.ndarray
    amsgrad: np.ndarray
    generic: np.ndarray

    @property
    def final(self) -> dict[str, float]:
        return {"adam": float(self.adam[-1]), "amsgrad": float(self.amsgrad[-1]), "generic": float(self.generic[-1])}


def _reddi_python(steps: int, C: float, beta1: float, beta2: float, alpha: float, x0: float, eps: float) -> ReddiResult:
    # the three recursions exactly as the library's kernels run them, in plain floats (~0.1 s for 3 x 30000)
    out = {}
    for method in ("adam", "amsgrad", "generic"):
        x, m = x0, 0.0
        v = 0.0 if method == "amsgrad" else eps  # GenericAdam seeds v with eps; AdaSAM seeds v_hat
        v_hat = eps
        xs = [x]
        for t in range(1, steps + 1):
            g = C if t % 3 == 1 else -1.0
            theta_t = 1.0 - 1.0 / t if method == "generic" else beta2
            m = beta1 * m + (1.0 - beta1) * g
            v = theta_t * v + (1.0 - theta_t) * g * g
            if method == "amsgrad":
                v_hat = max(v_hat, v)
            x -= alpha / math.sqrt(t) * m / math.sqrt(v_hat if method == "amsgrad" else v)
            x = min(1.0, max(-1.0, x))
            xs.append(x)
        out[method] = np.array(xs)
    return ReddiResult(**out)


def _reddi_torch(steps: int, C: float, beta1: float, beta2: float, alpha: float, x0: float, eps: float) -> ReddiResult:
    # the library's optimizers on a 1-element float64 tensor, projected after each step
    def make(method: str, x: torch.Tensor) -> torch.optim.Optimizer:
        if method == "adam":
            return GenericAdam([x], lr=alpha, beta=beta1, theta=beta2, lr_power=0.5, eps=eps, impl="foreach")
        if method == "generic":
            theta = dict(theta=0.0, theta_power=1.0)  # theta_t = 1 - 1/t
            return GenericAdam([x], lr=alpha, beta=beta1, lr_power=0.5, eps=eps, impl="foreach", **theta)
        return AdaSAM([x], lr=alpha, betas=(beta1, beta2), eps=math.sqrt(eps), impl="foreach")  # v_hat_0 = eps

    out = {}
    for method in ("adam", "amsgrad", "generic"):
        x = torch.tensor([x0], dtype=torch.float64, requires_grad=True)
        opt = make(method, x)
        xs = [x0]
        for t in range(1, steps + 1):
            x.grad = torch.tensor([C if t % 3 == 1 else -1.0], dtype=torch.float64)
            if method == "amsgrad":  # AdaSAM has no lr_power: schedule its lr by hand
                opt.param_groups[0]["lr"] = alpha / math.sqrt(t)
            opt.step()
            with torch.no_grad():
                x.clamp_(-1.0, 1.0)
            xs.append(x.item())
        out[method] = np.array(xs)
    return ReddiResult(**out)


def reddi_counterexample(
    steps: int = 30_000,
    C: float = 3.0,
    beta1: float = 0.0,
    beta2: float = 0.1,
    alpha: float = 0.5,
    x0: float = 0.0,
    eps: float = 1e-8,
    *,
    backend: Literal["python", "torch"] = "python",
) -> ReddiResult:
    r"""Adam, AMSGrad and Generic Adam on Reddi et al.'s online problem (docs/theory.md#reddi-et-als-counterexample).

    On :math:`[-1, 1]`, :math:`f_t(x) = Cx` when :math:`t \bmod 3 = 1`, else :math:`-x` (optimum
    :math:`x=-1` for :math:`C > 2`). All three use :math:`\alpha_t = \alpha/\sqrt t`, no bias
    correction, :math:`m_t = \beta_1 m_{t-1} + (1-\beta_1) g` and :math:`x \leftarrow
    \Pi_{[-1,1]}(x - \alpha_t m_t/\sqrt{v_t})`; Adam has :math:`v_t = \beta_2 v_{t-1} + (1-\beta_2)g^2`
    with :math:`v_0 = \epsilon` (eps only seeds v, as in :class:`~hf_adasam.optim.GenericAdam`, so
    the first step is :math:`-0.5\cdot 3/\sqrt{8.1} = -0.527046`), AMSGrad divides by
    :math:`\hat v_t = \max(\hat v_{t-1}, v_t)`, :math:`\hat v_0 = \epsilon`, and Generic Adam has
    :math:`\theta_t = 1 - 1/t`. ``backend="torch"`` runs the same through
    :class:`~hf_adasam.optim.GenericAdam` and :class:`~hf_adasam.optim.AdaSAM` (about 100x slower).
    """
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"Invalid steps: {steps!r}; expected an int >= 1")
    if not C > 0:
        raise ValueError(f"Invalid C: {C!r}; allowed range is (0, inf) (the counterexample needs C > 2)")
    for name, b in (("beta1", beta1), ("beta2", beta2)):
        if not 0 <= b < 1:
            raise ValueError(f"Invalid {name}: {b!r}; allowed range is [0, 1)")
    if not alpha > 0:
        raise ValueError(f"Invalid alpha: {alpha!r}; allowed range is (0, inf)")
    if not -1 <= x0 <= 1:
        raise ValueError(f"Invalid x0: {x0!r}; allowed range is [-1, 1]")
    if not eps > 0:
        raise ValueError(f"Invalid eps: {eps!r}; allowed range is (0, inf)")
    if backend == "python":
        return _reddi_python(steps, C, beta1, beta2, alpha, x0, eps)
    if backend == "torch":
        return _reddi_torch(steps, C, beta1, beta2, alpha, x0, eps)
    raise ValueError(f"Invalid backend: {backend!r}; allowed values are python, torch")
