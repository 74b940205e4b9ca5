"""One group's retention model: the family chosen by held-out error, its fit, and its bootstrap
over seeds — what K*, the forecasts and the backtest are all computed from.

Choosing the family. The families of ``analysis.retention`` reach similar in-sample error on
the few tasks a sweep runs and then extrapolate very differently, so in-sample fit cannot
choose between them. ``select_family`` uses a rolling origin inside the data it is given:
fit each family on the measurements taken while the first o tasks trained (o = ⌊m/2⌋ of the m
tasks available), forecast the measurements of those same tasks taken after, and keep the family
with the lowest weighted rms forecast error — unless a family with fewer parameters is not
worse by more than twice the standard error of the difference (paired over tasks): then the
simplest such, the theory's γ = 1/2 first. The theory is the prior, left only when the data
say so (and not on fewer than MIN_UNITS held-out tasks); a flat curve, which every family
fits, keeps it. Only data the caller may use are touched, so a
backtest that fits on its first m tasks also chooses on them.

Bootstrap. Replicates resample seeds (all the trials of a seed together) with replacement and
refit, starting from the full fit. With fewer than three seeds there are no replicates and no
interval (``analysis.groups``).

Task-to-task spread. Tasks of one trial do not forget alike: on the study's development seeds
the decay scale of single tasks (pspBinary, 256 units) spread by a factor e^0.36 around the
trial's, while trials differed by e^0.14. ``unit_spread`` estimates that spread, the s.d. σ_u
of log scale between units (trial, task), and the scatter σ_e of single tests around their
unit's curve, from the fitted residuals r by the method of moments. Linearised, a unit whose
log scale is off by u leaves r = o·u + e, o = b·(I − P)·∂z/∂log s (P: the part its own
amplitude absorbs). Per unit (3 points or more) û = Σ w·r·o / Σ w·o², with variance
σ_u² + σ_e²·v_u; σ_e² is the residual variance left after û, and

    σ_u² = Σ_u I_u·(û_u² − σ_e²·v_u) / Σ_u I_u,   I_u = Σ w·o²,

clipped at 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis import groups as grp
from analysis import retention as ret

DEFAULT_FAMILIES = ("power_half", "power", "exp", "weibull")   # the theory first
FALLBACK = "power_half"    # the theory's curve, when the data cannot choose
SELECTION_ORIGIN = 0.5     # fraction of the available tasks the selection fits on
MIN_UNITS = 8              # (trial, task) units held out before the data may overrule the prior


@dataclass
class Arrays:
    """Points as plain arrays (the bootstrap refits hundreds of times; pandas would dominate)."""

    n: np.ndarray
    y: np.ndarray          # accuracy − chance
    w: np.ndarray
    unit: np.ndarray       # 0..m−1, one per (trial, task)
    m: int

    @staticmethod
    def pool(parts: list["Arrays"]) -> "Arrays":
        offsets = np.cumsum([0] + [p.m for p in parts[:-1]])
        return Arrays(np.concatenate([p.n for p in parts]), np.concatenate([p.y for p in parts]),
                      np.concatenate([p.w for p in parts]),
                      np.concatenate([p.unit + o for p, o in zip(parts, offsets)]),
                      int(sum(p.m for p in parts)))


@dataclass
class GroupModel:
    """A family fitted to one group's points, with its seed bootstrap (``boot``: (B, k) θ
    draws, None with fewer than three seeds)."""

    family: ret.Family
    fit: ret.Fit
    points: pd.DataFrame          # retention points with ``unit`` and ``fitted``
    units: pd.DataFrame           # unit → trial_id, seed, eval_task, b (fitted A − c)
    arrays: Arrays
    boot: np.ndarray | None
    boot_mean_b: np.ndarray | None  # (B,) the replicates' mean amplitude Ā − c
    n_seeds: int
    chance: float
    selection: pd.DataFrame = field(default_factory=pd.DataFrame)
    unit_sd: float = 0.0           # σ_u: s.d. of log scale between (trial, task) units
    jitter: float = 0.0            # σ_e: scatter of single tests around their unit's curve

    @property
    def interval_note(self) -> str:
        return grp.no_interval(self.n_seeds)


def arrays_of(points: pd.DataFrame, chance: float) -> tuple[Arrays, pd.DataFrame]:
    """(Arrays, units table) of retention points: each (trial, task) its own unit."""
    keys = list(zip(points["trial_id"], points["eval_task"].astype(int)))
    unit, uniques = pd.factorize(pd.Series(keys, dtype=object))
    units = pd.DataFrame(list(uniques), columns=["trial_id", "eval_task"])
    seeds = points.drop_duplicates("trial_id").set_index("trial_id")
    units["seed"] = (seeds["seed"].reindex(units["trial_id"]).to_numpy() if "seed" in seeds
                     else units["trial_id"].to_numpy())
    arrays = Arrays(points["n"].to_numpy(float), (points["accuracy"] - chance).to_numpy(float),
                    points["weight"].to_numpy(float), np.asarray(unit, dtype=int), len(units))
    return arrays, units


def _per_seed(arrays: Arrays, units: pd.DataFrame) -> list[Arrays]:
    parts = []
    for _, rows in units.groupby("seed", sort=True):
        local = np.full(arrays.m, -1)
        local[rows.index.to_numpy()] = np.arange(len(rows))
        mask = np.isin(arrays.unit, rows.index.to_numpy())
        parts.append(Arrays(arrays.n[mask], arrays.y[mask], arrays.w[mask],
                            local[arrays.unit[mask]], len(rows)))
    return parts


def bootstrap(arrays: Arrays, units: pd.DataFrame, fam: ret.Family, theta: np.ndarray,
              n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
    """(θ, mean amplitude) of ``n_boot`` refits on seeds resampled with replacement — (B, k)
    and (B,) — or (None, None) with fewer than three seeds."""
    parts = _per_seed(arrays, units)
    if len(parts) < grp.MIN_SEEDS or n_boot <= 0:
        return None, None
    rng = np.random.default_rng(seed)
    thetas, mean_b = np.empty((n_boot, len(theta))), np.empty(n_boot)
    for b in range(n_boot):
        picked = Arrays.pool([parts[i] for i in rng.integers(0, len(parts), len(parts))])
        fit = ret.fit_curve(picked.n, picked.y, picked.unit, picked.w, fam, start=theta)
        thetas[b], mean_b[b] = fit.theta, np.nanmean(fit.b)
    return thetas, mean_b


def select_family(points: pd.DataFrame, chance: float,
                  families=DEFAULT_FAMILIES) -> pd.DataFrame:
    """Held-out rms error (accuracy units) of each family at a rolling origin (see the module
    docstring): columns family, heldout_rmse, n_heldout, origin, chosen. When the data are too
    short to hold anything out, every error is NaN and the theory's curve is chosen."""
    m = float(points["tasks_trained"].max()) if len(points) else 0.0
    origin = int(np.floor(SELECTION_ORIGIN * m))
    fit_part = points[points["tasks_trained"] <= origin]
    later = points[(points["tasks_trained"] > origin) & (points["eval_task"] < origin)]
    usable = bool(origin >= 2 and fit_part.loc[fit_part["n"] > 0, "n"].nunique() >= 3
                  and len(later))
    losses = {}
    for name in families:
        if usable:
            predicted = predict_known(fit_points(fit_part, chance, name), later)
            losses[name] = (later["accuracy"].to_numpy() - predicted) ** 2
    w = later["weight"].to_numpy(float)
    table = pd.DataFrame({"family": list(families), "n_heldout": len(later), "origin": origin,
                          "heldout_rmse": [float(np.sqrt(np.sum(w * losses[f]) / w.sum()))
                                           if usable else np.nan for f in families]})
    best = _simplest_not_worse(losses, later, w) if usable else (
        FALLBACK if FALLBACK in families else families[0])
    return table.assign(chosen=table["family"] == best)


def _simplest_not_worse(losses: dict, later: pd.DataFrame, w: np.ndarray) -> str:
    """The family with the fewest parameters (the theory's first) whose held-out loss is not
    worse than the best's by more than twice its standard error, paired over units (trial,
    task): tests of one task are not independent, so units are the replicates."""
    unit = later.groupby(["trial_id", "eval_task"], sort=False).ngroup().to_numpy()
    if unit.max() + 1 < MIN_UNITS:   # too few tasks held out to leave the prior
        return min(losses, key=lambda f: len(ret.family(f).params))
    weight = np.bincount(unit, w)
    per_unit = {f: np.bincount(unit, w * loss) / weight for f, loss in losses.items()}
    best = min(losses, key=lambda f: per_unit[f].mean())
    order = sorted(losses, key=lambda f: len(ret.family(f).params))   # stable: theory first
    for name in order:
        d = per_unit[name] - per_unit[best]
        se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else 0.0
        if d.mean() <= 2 * se:
            return name
    return best


def fit_points(points: pd.DataFrame, chance: float, family: str = "auto", *, n_boot: int = 0,
               seed: int = 0, families=DEFAULT_FAMILIES) -> GroupModel:
    """The group model of ``points`` (``retention.retention_points`` of one group's data):
    ``family`` "auto" chooses by ``select_family``."""
    selection = pd.DataFrame()
    if family == "auto":
        selection = select_family(points, chance, families)
        family = str(selection.loc[selection["chosen"], "family"].iloc[0])
    fam = ret.family(family)
    arrays, units = arrays_of(points, chance)
    fit = ret.fit_curve(arrays.n, arrays.y, arrays.unit, arrays.w, fam)
    units = units.assign(b=fit.b)
    fitted = chance + fit.b[arrays.unit] * fam.shape(arrays.n, *fit.theta)
    points = points.assign(unit=arrays.unit, fitted=fitted)
    boot, boot_mean_b = bootstrap(arrays, units, fam, fit.theta, n_boot, seed)
    unit_sd, jitter = unit_spread(fam, fit, arrays)
    return GroupModel(fam, fit, points, units, arrays, boot, boot_mean_b, grp.n_seeds(points),
                      chance, selection, unit_sd, jitter)


def unit_spread(fam: ret.Family, fit: ret.Fit, a: Arrays) -> tuple[float, float]:
    """(σ_u, σ_e): the s.d. of log scale between units and the scatter of single tests around
    their unit's curve (see the module docstring)."""
    step = 1e-4
    up, down = fit.theta.copy(), fit.theta.copy()
    up[0] += step
    down[0] -= step
    g = fam.shape(a.n, *fit.theta)
    b = np.nan_to_num(fit.b)
    gg = np.bincount(a.unit, a.w * g * g, minlength=a.m)
    # o: how a unit's fitted curve moves with its log scale, less what its amplitude absorbs.
    o = b[a.unit] * (fam.shape(a.n, *up) - fam.shape(a.n, *down)) / (2 * step)
    along = np.divide(np.bincount(a.unit, a.w * g * o, minlength=a.m), gg, out=np.zeros(a.m),
                      where=gg > 0)
    o = o - along[a.unit] * g
    r = a.y - b[a.unit] * g
    info = np.bincount(a.unit, a.w * o * o, minlength=a.m)
    counts = np.bincount(a.unit, minlength=a.m)
    usable = (counts >= 3) & (info > 1e-12)
    if not usable.any():
        return 0.0, float(np.sqrt(np.sum(a.w * r * r) / max(a.w.sum(), 1e-12)))
    u_hat = np.divide(np.bincount(a.unit, a.w * r * o, minlength=a.m), info,
                      out=np.zeros(a.m), where=usable)
    rest = r - u_hat[a.unit] * o
    keep = usable[a.unit]
    dof = np.bincount(a.unit, a.w, minlength=a.m) * np.maximum(1 - 2 / np.maximum(counts, 1), 0)
    jitter2 = np.sum((a.w * rest * rest)[keep]) / max(dof[usable].sum(), 1e-12)
    spread = np.divide(np.bincount(a.unit, a.w * a.w * o * o, minlength=a.m), info * info,
                       out=np.zeros(a.m), where=usable)          # Var(û_u) / σ_e²
    q = info[usable]
    sigma_u2 = np.sum(q * (u_hat[usable] ** 2 - jitter2 * spread[usable])) / q.sum()
    return float(np.sqrt(max(sigma_u2, 0.0))), float(np.sqrt(jitter2))


def predict_known(model: GroupModel, targets: pd.DataFrame) -> np.ndarray:
    """Point forecasts c + b_u·z(n; θ̂) for targets (trial_id, eval_task, n) whose task is in
    the model; a task it has not seen gets its trial's mean amplitude."""
    b = _amplitude_lookup(model, targets)
    return model.chance + b * model.family.shape(targets["n"].to_numpy(float), *model.fit.theta)


def _amplitude_lookup(model: GroupModel, targets: pd.DataFrame) -> np.ndarray:
    known = model.units.set_index(["trial_id", "eval_task"])["b"]
    index = pd.MultiIndex.from_arrays([targets["trial_id"], targets["eval_task"].astype(int)])
    b = known.reindex(index).to_numpy(float)
    trial_mean = model.units.groupby("trial_id")["b"].mean()
    fill = trial_mean.reindex(targets["trial_id"]).to_numpy(float)
    return np.where(np.isnan(b), fill, b)
