"""A per-host behaviour model: is this source host's window unlike its app's audit windows?

Why a model on top of the rules: the rule-based detectors each look at one signal (a new
edge, fan-out, failures, volume, hours). A compromised host often moves several signals a
little at once — a few more peers, a new port, more failures, at an unusual hour of the
week — none past its own threshold. :class:`BehaviourModel` scores the whole window against
what hosts of the same app did during the audit, and names the features that moved most.
It never alerts on its own (the pipeline only uses it to corroborate rule-based signals of
the same host and window), so it cannot raise the false alert rate.

Input: closed per-source-host windows as a dict of parallel numpy arrays
(:data:`WINDOW_FIELDS`), turned into the feature matrix by :func:`window_features`
(:data:`FEATURES`, in this order): log1p counts of distinct peers, ports and destination apps,
bytes out, new-edge count and flows, the failure share, and the hour of week as a point on
a circle (sin, cos).

Scikit-learn conventions: ``__init__`` stores parameters only; ``fit``/``partial_fit``
return ``self``; fitted attributes end in ``_``; lower :meth:`BehaviourModel.score_samples`
is more abnormal and :meth:`BehaviourModel.decision_function` is negative for outliers
(``score_samples - offset_``, ``offset_`` the ``contamination`` quantile of the training
scores). Each app's features are normalised robustly (median and IQR of that app's training
windows; apps with fewer than ``min_app_windows`` windows, and apps never seen, use the
global median and IQR); the scorer (IsolationForest by default, LOF novelty or a robust
z-score) runs on these deviations.

Deterministic: training rows are kept in a bounded reservoir (at most ``max_windows``: the
rows with the smallest content hash, so the same set whatever the arrival order) and sorted
before fitting with a fixed ``random_state``: streaming (``partial_fit`` per batch) equals
replay (one ``fit``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils.validation import check_is_fitted, validate_data

FEATURES = ("peers", "ports", "apps", "bytes_out", "failure_share", "new_edges", "flows",
            "hour_sin", "hour_cos")
"""The model's features, in column order."""
_LOG1P = ("peers", "ports", "apps", "bytes_out", "new_edges", "flows")
WINDOW_FIELDS = ("window", "app", "peers", "ports", "apps", "bytes_out", "failures", "flows",
                 "new_edges")
"""Arrays a window dict must carry: ``window`` (start, epoch s), ``app`` (the source's
workload key), counts of distinct ``peers`` (destination hosts), ``ports`` and ``apps``, and
``bytes_out``, ``failures`` (rejected/reset/unanswered flows), ``flows``, ``new_edges``
(flows' edges unknown to the baseline) per window. Optional: ``host`` (source address)."""
HOUR = 3600.0
WEEK_HOURS = 168
_MONDAY = 72  # the epoch began on a Thursday: hour-of-week 0 is Monday 00:00 UTC
SCORERS = ("iforest", "lof", "robust_z")
IQR_TO_SIGMA = 1.349  # IQR of a normal distribution in standard deviations
Z_CLIP = 50.0


def normalisation_doc() -> dict[str, Any]:
    """How :func:`window_features` and the model transform a window (for manifests)."""
    return {
        "log1p": list(_LOG1P),
        "failure_share": "failures / flows",
        "hour_sin/hour_cos": "sin/cos(2π · hour of week / 168), hour 0 = Monday 00:00 UTC",
        "per_app": "(x - median) / max(IQR / 1.349, min_scale) over the app's training "
                   "windows; global median/IQR for apps with fewer than min_app_windows "
                   f"windows and unseen apps; clipped to ±{Z_CLIP:g}",
    }


def window_features(windows: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(X, apps): the :data:`FEATURES` matrix (float64, one row per window) and each row's
    app (str array) from a dict of window arrays (:data:`WINDOW_FIELDS`)."""
    missing = [f for f in WINDOW_FIELDS if f not in windows]
    if missing:
        raise ValueError(f"window arrays lack {', '.join(missing)}")
    flows = np.asarray(windows["flows"], dtype=np.float64)
    cols: dict[str, np.ndarray] = {
        f: np.log1p(np.maximum(np.asarray(windows[f], dtype=np.float64), 0.0))
        for f in ("peers", "ports", "apps", "bytes_out", "new_edges")}
    cols["flows"] = np.log1p(np.maximum(flows, 0.0))
    failures = np.asarray(windows["failures"], dtype=np.float64)
    cols["failure_share"] = np.where(flows > 0, failures / np.maximum(flows, 1.0), 0.0)
    how = (np.floor(np.asarray(windows["window"], dtype=np.float64) / HOUR) + _MONDAY) % WEEK_HOURS
    angle = 2 * np.pi * how / WEEK_HOURS
    cols["hour_sin"], cols["hour_cos"] = np.sin(angle), np.cos(angle)
    X = np.stack([cols[f] for f in FEATURES], axis=1) if len(flows) else np.zeros(
        (0, len(FEATURES)))
    return X, np.asarray(windows["app"]).astype(str)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 (wrapping arithmetic)."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def row_hash(X: np.ndarray, apps: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each (app, feature row): the same in every process and order."""
    uniq, inv = np.unique(apps, return_inverse=True)
    app_h = np.array([int.from_bytes(hashlib.blake2b(a.encode(), digest_size=8).digest(),
                                     "little") for a in uniq.tolist()], dtype=np.uint64)
    h = app_h[inv.ravel()] if len(uniq) else np.zeros(0, dtype=np.uint64)
    X = np.ascontiguousarray(X, dtype=np.float64) + 0.0  # -0.0 → 0.0
    with np.errstate(over="ignore"):
        for j in range(X.shape[1]):
            h = _mix(h ^ _mix(X[:, j].view(np.uint64) + np.uint64(j + 1)))
    return h


def _canonical(X: np.ndarray, apps: np.ndarray) -> np.ndarray:
    """Row order by (app, features): the same whatever order the rows came in."""
    return np.lexsort((*X.T[::-1], apps)) if len(X) else np.zeros(0, dtype=np.int64)


class BehaviourModel(OutlierMixin, BaseEstimator):
    """Per-app robustly normalised windows scored by an outlier detector (see the module).

    Parameters
    ----------
    scorer : ``"iforest"`` (IsolationForest), ``"lof"`` (LocalOutlierFactor, novelty) or
        ``"robust_z"`` (minus the root mean square of the per-feature deviations).
    n_estimators, max_samples : IsolationForest's trees and rows per tree.
    n_neighbors : LOF's neighbours.
    contamination : share of training windows below the threshold (``offset_``).
    min_app_windows : training windows an app needs for its own median/IQR.
    min_scale : floor of a feature's scale (IQR / 1.349), in transformed units.
    max_windows : the training reservoir's bound (rows kept, by smallest content hash).
    random_state : seed of the scorer (fixed: results are reproducible).

    Fitted attributes: ``apps_`` (apps with their own normalisation), ``center_``/``scale_``
    (one row per app, last row global), ``estimator_``, ``offset_``, ``n_features_in_``,
    ``reservoir_X_``/``reservoir_apps_`` (the training rows, canonical order) and
    ``n_windows_seen_``.
    """

    apps_: np.ndarray
    center_: np.ndarray
    scale_: np.ndarray
    offset_: float
    reservoir_X_: np.ndarray
    reservoir_apps_: np.ndarray
    n_windows_seen_: int

    def __init__(self, scorer: str = "iforest", *, n_estimators: int = 100,
                 max_samples: int = 256, n_neighbors: int = 20, contamination: float = 0.01,
                 min_app_windows: int = 24, min_scale: float = 0.25, max_windows: int = 20_000,
                 random_state: int = 0) -> None:
        self.scorer = scorer
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.n_neighbors = n_neighbors
        self.contamination = contamination
        self.min_app_windows = min_app_windows
        self.min_scale = min_scale
        self.max_windows = max_windows
        self.random_state = random_state

    # -- fitting ----------------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None, apps: Sequence[str] | np.ndarray | None = None
            ) -> BehaviourModel:
        """Fit on windows ``X`` (rows beyond ``max_windows`` are sampled by content hash);
        ``apps``: each row's app (default: one app for all)."""
        X = validate_data(self, X, reset=True, dtype=np.float64)
        for name in ("reservoir_X_", "reservoir_apps_", "n_windows_seen_"):
            self.__dict__.pop(name, None)
        return self._add_and_fit(X, self._apps(apps, len(X)))

    def partial_fit(self, X: Any, y: Any = None,
                    apps: Sequence[str] | np.ndarray | None = None) -> BehaviourModel:
        """Add windows to the reservoir and refit on it: the same fitted model as one
        :meth:`fit` on every window so far, in any order (the reservoir keeps the
        ``max_windows`` rows of smallest content hash of all rows seen, whatever their order)."""
        first = not hasattr(self, "reservoir_X_")
        X = validate_data(self, X, reset=first, dtype=np.float64)
        return self._add_and_fit(X, self._apps(apps, len(X)))

    @staticmethod
    def _apps(apps: Sequence[str] | np.ndarray | None, n: int) -> np.ndarray:
        if apps is None:
            return np.full(n, "", dtype=str)
        out = np.asarray(apps).astype(str)
        if out.shape != (n,):
            raise ValueError(f"apps has {out.shape[0] if out.ndim else 0} values for {n} rows")
        return out

    def _add_and_fit(self, X: np.ndarray, apps: np.ndarray) -> BehaviourModel:
        if self.scorer not in SCORERS:
            raise ValueError(f"scorer must be one of {', '.join(SCORERS)}, got {self.scorer!r}")
        if not 0 < self.contamination <= 0.5:
            raise ValueError(f"contamination must be in (0, 0.5], got {self.contamination}")
        self.n_windows_seen_ = getattr(self, "n_windows_seen_", 0) + len(X)
        if getattr(self, "reservoir_X_", None) is not None:
            X = np.concatenate([self.reservoir_X_, X])
            apps = np.concatenate([self.reservoir_apps_, apps])
        if len(X) > self.max_windows:
            h = row_hash(X, apps)
            keep = np.lexsort((*X.T[::-1], apps, h))[: self.max_windows]
            X, apps = X[keep], apps[keep]
        order = _canonical(X, apps)
        self.reservoir_X_, self.reservoir_apps_ = X[order], apps[order]
        self._fit_reservoir()
        return self

    def _fit_reservoir(self) -> None:
        X, apps = self.reservoir_X_, self.reservoir_apps_
        uniq, inv, counts = np.unique(apps, return_inverse=True, return_counts=True)
        inv = inv.ravel()
        own = uniq[counts >= self.min_app_windows]
        center = np.empty((len(own) + 1, X.shape[1]))
        scale = np.empty_like(center)
        for i, a in enumerate([*own.tolist(), None]):
            rows = X if a is None else X[inv == int(np.searchsorted(uniq, a))]
            q1, med, q3 = np.percentile(rows, [25, 50, 75], axis=0)
            center[i], scale[i] = med, np.maximum((q3 - q1) / IQR_TO_SIGMA, self.min_scale)
        self.apps_, self.center_, self.scale_ = own, center, scale
        Z = self.deviations(X, apps)
        if self.scorer == "iforest":
            from sklearn.ensemble import IsolationForest

            self.estimator_: Any = IsolationForest(
                n_estimators=self.n_estimators, max_samples=min(self.max_samples, len(X)),
                random_state=self.random_state).fit(Z)
        elif self.scorer == "lof":
            from sklearn.neighbors import LocalOutlierFactor

            if len(X) < 2:
                raise ValueError("LOF needs at least 2 samples, got 1 sample")
            self.estimator_ = LocalOutlierFactor(
                n_neighbors=min(self.n_neighbors, len(X) - 1), novelty=True).fit(Z)
        else:
            self.estimator_ = None
        self.offset_ = float(np.quantile(self._raw_scores(Z), self.contamination))

    # -- scoring ----------------------------------------------------------------------------
    def deviations(self, X: Any, apps: Sequence[str] | np.ndarray | None = None) -> np.ndarray:
        """Per-feature robust deviations (z) of each row from its app's training windows."""
        check_is_fitted(self, "center_")
        X = np.asarray(X, dtype=np.float64)
        a = self._apps(apps, len(X))
        idx = np.searchsorted(self.apps_, a)
        hit = (idx < len(self.apps_)) & (self.apps_[np.minimum(idx, len(self.apps_) - 1)] == a) \
            if len(self.apps_) else np.zeros(len(a), dtype=bool)
        row = np.where(hit, idx, len(self.apps_))
        return np.clip((X - self.center_[row]) / self.scale_[row], -Z_CLIP, Z_CLIP)

    def _raw_scores(self, Z: np.ndarray) -> np.ndarray:
        if self.estimator_ is None:  # robust_z
            return -np.sqrt(np.mean(Z * Z, axis=1))
        return np.asarray(self.estimator_.score_samples(Z), dtype=np.float64)

    def score_samples(self, X: Any, apps: Sequence[str] | np.ndarray | None = None
                      ) -> np.ndarray:
        """Normality of each window: lower is more abnormal."""
        check_is_fitted(self, "offset_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return self._raw_scores(self.deviations(X, apps))

    def decision_function(self, X: Any, apps: Sequence[str] | np.ndarray | None = None
                          ) -> np.ndarray:
        """``score_samples - offset_``: negative for windows beyond the threshold."""
        return self.score_samples(X, apps) - self.offset_

    def predict(self, X: Any, apps: Sequence[str] | np.ndarray | None = None) -> np.ndarray:
        """-1 for outliers, 1 for inliers."""
        return np.where(self.decision_function(X, apps) < 0, -1, 1)

    def explain(self, X: Any, apps: Sequence[str] | np.ndarray | None = None, *,
                names: Sequence[str] = FEATURES, top: int = 3) -> list[list[tuple[str, float]]]:
        """Per row, the ``top`` features with the largest absolute deviation (name, z)."""
        Z = self.deviations(X, apps)
        order = np.argsort(-np.abs(Z), axis=1, kind="stable")[:, :top]
        return [[(names[j], round(float(Z[i, j]), 2)) for j in row]
                for i, row in enumerate(order.tolist())]

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags


__all__ = ["FEATURES", "SCORERS", "WINDOW_FIELDS", "BehaviourModel", "normalisation_doc",
           "row_hash", "window_features"]
