"""Retention curves: the points a model is fitted to, their weights, and the curve families.

Points. Every test measurement of a learned task j taken n ≥ 0 tasks after j was trained: the
accuracy matrix gives R[i, j] at n = i − j, and task 0, tested every ``eval_every`` steps, adds
fractional n (``metrics.anytime_curves``). A task counts as learned when its just-trained
accuracy R[j, j] ≥ c + MIN_GAIN (c chance).

Weights: one unit of weight per (trial, task, n-bin), shared by the points in it, with
bin = ⌈n⌉ (the boundary measurement R[j+k, j] and the task-0 measurements taken while the k-th
later task trained share bin k). Task 0's dense curve would otherwise outweigh every other task
— with 1000 steps per task and eval_every 100 it supplies ten points per bin where the others
supply one — and the fit would be a fit of task 0.

Families, in normalised accuracy z(n) = (a(n) − c)/(A_j − c), A_j the task's just-trained
accuracy (fitted, one per trial and task):

    power       z = (1 + n/κ)^(−γ)     PSP's interference law (Appendix A: noise ∝ sqrt(K/M)
                                        gives γ = 1/2) with γ free
    power_half  z = (1 + n/κ)^(−1/2)   the theory's γ, fixed
    exp         z = exp(−n/τ)          a constant forgetting rate per stored task
    weibull     z = exp(−(n/τ)^β)      two regimes when β > 1: little loss for the first
                                        tasks, then a steepening fall (the standard network on
                                        the study's development seeds: β ≈ 1.7); β < 1 decays
                                        fast then slowly, like the power laws

The power laws and the exponential only decelerate; a network that holds its first few later
tasks and then collapses (the standard network) defeats them: on the development seeds their
forecast of its task 0 after 14 tasks from 6 was 15–25 points high, the Weibull's 3 low.

Fitting: weighted least squares on the accuracies, a − c ≈ b_u·z(n; θ) with one amplitude
b_u = A_u − c per unit u = (trial, task). For a given θ each b_u is Σ w·z·y / Σ w·z² over its
points (closed form), so only θ is searched: a grid over its bounds finds the basin, then
Brent (one parameter) or bounded Nelder–Mead (two) refines it. θ lives in log coordinates
(log κ, log γ, log τ, log β), where the SSE is smooth and the bounds are wide.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import optimize

from analysis.metrics import anytime_curves

CHANCE = 0.1           # 10-way classification (MNIST, FashionMNIST, CIFAR-10)
MIN_GAIN = 0.05        # a task must have been learned this far above chance to measure retention
LOG_SCALE = (np.log(1e-3), np.log(1e9))   # κ and τ, in tasks
LOG_GAMMA = (np.log(0.02), np.log(5.0))
LOG_BETA = (np.log(0.2), np.log(5.0))
THEORY_GAMMA = 0.5


@dataclass(frozen=True)
class Family:
    """A retention curve z(n; θ) with θ in fitted (log) coordinates."""

    name: str
    formula: str
    params: tuple[str, ...]                       # natural names, e.g. ("kappa", "gamma")
    bounds: tuple[tuple[float, float], ...]       # of θ
    shape: Callable[..., np.ndarray]              # shape(n, *θ) → z, broadcasting
    crossing: Callable[..., float]                # crossing(z*, *θ) → n with z(n) = z*
    grid: tuple[int, ...] = field(default=(37,))  # starting grid per parameter

    def natural(self, theta) -> dict[str, float]:
        return {name: float(np.exp(t)) for name, t in zip(self.params, theta)}

    def at_bound(self, theta, index: int = 0) -> bool:
        """θ[index] at (or within 0.1% of) its upper bound: no measurable decay."""
        lo, hi = self.bounds[index]
        return bool(theta[index] >= hi - 1e-3 * (hi - lo))


def _power(n, log_kappa, log_gamma):
    return (1.0 + np.asarray(n, dtype=float) / np.exp(log_kappa)) ** (-np.exp(log_gamma))


def _power_crossing(z_star, log_kappa, log_gamma):
    return np.exp(log_kappa) * (z_star ** (-1.0 / np.exp(log_gamma)) - 1.0)


def _exp(n, log_tau):
    return np.exp(-np.asarray(n, dtype=float) / np.exp(log_tau))


def _weibull(n, log_tau, log_beta):
    return np.exp(-(np.asarray(n, dtype=float) / np.exp(log_tau)) ** np.exp(log_beta))


FAMILIES: dict[str, Family] = {
    "power": Family("power", "z = (1 + n/κ)^(−γ)", ("kappa", "gamma"), (LOG_SCALE, LOG_GAMMA),
                    _power, _power_crossing, grid=(19, 9)),
    "power_half": Family("power_half", "z = (1 + n/κ)^(−1/2)", ("kappa",), (LOG_SCALE,),
                         lambda n, lk: _power(n, lk, np.log(THEORY_GAMMA)),
                         lambda z, lk: _power_crossing(z, lk, np.log(THEORY_GAMMA))),
    "exp": Family("exp", "z = exp(−n/τ)", ("tau",), (LOG_SCALE,), _exp,
                  lambda z, lt: -np.exp(lt) * np.log(z)),
    "weibull": Family("weibull", "z = exp(−(n/τ)^β)", ("tau", "beta"), (LOG_SCALE, LOG_BETA),
                      _weibull, lambda z, lt, lb: np.exp(lt) * (-np.log(z)) ** np.exp(-lb),
                      grid=(19, 9)),
}


def family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown curve family {name!r}; known: {', '.join(FAMILIES)}") from None


# ---- data → points ---------------------------------------------------------------------------
def retention_points(df: pd.DataFrame, chance: float = CHANCE,
                     min_gain: float = MIN_GAIN) -> pd.DataFrame:
    """The points the families are fitted to (see the module docstring).

    Columns: the trial's parameters, eval_task, step, tasks_trained (step / spt), n (tasks
    stored after j), accuracy, a0 (the measured R[j, j]), bin (⌈n⌉), weight (1 / points in
    the (trial, task, bin)) and n_examples (test-set size, when the data have it).
    """
    curves = anytime_curves(df)
    if curves.empty:
        return curves.assign(n=[], a0=[], bin=[], weight=[])
    spt = curves["steps_per_task"].astype(int)
    just_trained = curves[curves["step"] == (curves["eval_task"].astype(int) + 1) * spt]
    a0 = just_trained.groupby(["trial_id", "eval_task"])["accuracy"].last().rename("a0")
    points = curves[curves["stored_after"] >= 0].join(a0, on=["trial_id", "eval_task"])
    points = points[points["a0"].notna() & (points["a0"] >= chance + min_gain)]
    n = points["stored_after"].to_numpy(dtype=float)
    points = points.assign(n=n, bin=np.ceil(n - 1e-9).astype(int))
    size = points.groupby(["trial_id", "eval_task", "bin"])["n"].transform("size")
    return points.assign(weight=1.0 / size).reset_index(drop=True)


# ---- fitting ---------------------------------------------------------------------------------
@dataclass
class Fit:
    """θ (fitted coordinates), per-unit amplitudes b (A − c), weighted SSE and rmse."""

    family: Family
    theta: np.ndarray
    b: np.ndarray
    sse: float
    rmse: float

    def natural(self) -> dict[str, float]:
        return self.family.natural(self.theta)


def amplitudes(g: np.ndarray, y: np.ndarray, unit: np.ndarray, w: np.ndarray,
               m: int, fill: float = np.nan) -> np.ndarray:
    """b_u = Σ w·g·y / Σ w·g² per unit (``fill`` for a unit without points or whose curve
    has vanished). ``g`` may carry a leading axis of draws: (D, N) → (D, m)."""
    if g.ndim == 1:
        num = np.bincount(unit, w * g * y, minlength=m)
        den = np.bincount(unit, w * g * g, minlength=m)
    else:  # one bincount over (draw, unit) pairs
        d = g.shape[0]
        index = (np.arange(d)[:, None] * m + unit[None, :]).ravel()
        num = np.bincount(index, (w * g * y).ravel(), minlength=d * m).reshape(d, m)
        den = np.bincount(index, (w * g * g).ravel(), minlength=d * m).reshape(d, m)
    return np.divide(num, den, out=np.full(num.shape, fill), where=den > 0)


def fit_curve(n, excess, unit, weight, fam: Family, start=None) -> Fit:
    """Weighted least squares of excess = a − c ≈ b_unit·z(n; θ) (see the module docstring).

    ``unit`` numbers each point's (trial, task) 0..m−1; ``start`` (a θ) refines from there
    without the grid, as bootstrap replicates of a fit do.
    """
    n = np.asarray(n, dtype=float)
    y = np.asarray(excess, dtype=float)
    unit = np.asarray(unit, dtype=int)
    w = np.asarray(weight, dtype=float)
    m = int(unit.max()) + 1 if len(unit) else 0

    def sse(theta) -> float:
        g = fam.shape(n, *theta)
        r = y - amplitudes(g, y, unit, w, m, fill=0.0)[unit] * g
        return float(np.dot(w, r * r))

    bounds = np.array(fam.bounds, dtype=float)
    if start is None:
        axes = [np.linspace(lo, hi, k) for (lo, hi), k in zip(bounds, fam.grid)]
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(axes))
        values = np.array([sse(t) for t in grid])
        theta0 = grid[int(np.argmin(values))]
        step = np.array([(hi - lo) / (k - 1) for (lo, hi), k in zip(bounds, fam.grid)])
    else:
        theta0 = np.clip(np.asarray(start, dtype=float), bounds[:, 0], bounds[:, 1])
        step = np.full(len(bounds), 2.0)
    theta = _refine(sse, theta0, step, bounds)
    total = sse(theta)
    g = fam.shape(n, *theta)
    b = amplitudes(g, y, unit, w, m)
    return Fit(fam, theta, b, total, float(np.sqrt(total / max(w.sum(), 1e-12))))


def _refine(sse, theta0: np.ndarray, step: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    if len(theta0) == 1:
        lo = max(bounds[0, 0], theta0[0] - step[0])
        hi = min(bounds[0, 1], theta0[0] + step[0])
        result = optimize.minimize_scalar(lambda x: sse([x]), bounds=(lo, hi), method="bounded",
                                          options={"xatol": 1e-6})
        best = np.array([result.x])
    else:
        simplex = np.vstack([theta0] + [theta0 + np.eye(len(theta0))[i] * step[i] * 0.5
                                        for i in range(len(theta0))])
        simplex = np.clip(simplex, bounds[:, 0], bounds[:, 1])
        # Stop at 0.1% in κ and γ, or when the SSE stops moving in its 7th digit.
        result = optimize.minimize(sse, theta0, method="Nelder-Mead", bounds=bounds,
                                   options={"initial_simplex": simplex, "xatol": 1e-3,
                                            "fatol": 1e-7 * sse(theta0), "maxiter": 400})
        best = np.asarray(result.x)
    return best if sse(best) <= sse(theta0) else theta0


# ---- goodness of fit -------------------------------------------------------------------------
def residual_trend(n, residual, weight) -> float:
    """Weighted least-squares slope of the residuals (accuracy units) on n, per 10 tasks: a
    model that fits the shape leaves none; a drift says the curve bends differently."""
    n = np.asarray(n, dtype=float)
    r = np.asarray(residual, dtype=float)
    w = np.asarray(weight, dtype=float)
    if len(n) < 2 or np.ptp(n) == 0:
        return float("nan")
    mean_n = np.average(n, weights=w)
    slope = np.sum(w * (n - mean_n) * (r - np.average(r, weights=w))) / np.sum(w * (n - mean_n) ** 2)
    return float(10.0 * slope)
