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
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Self

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


def app_hash(apps: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each app name (blake2b; the same in every process)."""
    uniq, inv = np.unique(apps, return_inverse=True)
    h = np.array([int.from_bytes(hashlib.blake2b(a.encode(), digest_size=8).digest(), "little")
                  for a in uniq.tolist()], dtype=np.uint64)
    return h[inv.ravel()] if len(uniq) else np.zeros(0, dtype=np.uint64)


def row_hash(X: np.ndarray, apps: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each (app, feature row): the same in every process and order."""
    h = app_hash(apps)
    X = np.ascontiguousarray(X, dtype=np.float64) + 0.0  # -0.0 → 0.0
    with np.errstate(over="ignore"):
        for j in range(X.shape[1]):
            h = _mix(h ^ _mix(X[:, j].view(np.uint64) + np.uint64(j + 1)))
    return h


def _after_equals(sorted_key: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Per (app hash, row hash) row of ``key``: the position after its equals in the
    lexicographically sorted ``sorted_key`` (a binary search per app run)."""
    a = sorted_key[:, 0]
    lo = np.searchsorted(a, key[:, 0], side="left")
    hi = np.searchsorted(a, key[:, 0], side="right")
    at = lo.copy()  # an app not in sorted_key: before the next app's run
    present = hi > lo
    for start in np.unique(lo[present]).tolist():
        m = np.flatnonzero(present & (lo == start))
        run = sorted_key[start:int(hi[m[0]]), 1]
        at[m] = start + np.searchsorted(run, key[m, 1], side="right")
    return at


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
    max_windows : the training reservoir's bound (rows kept, by smallest content hash), in
        all or, with ``per_app``, per app.
    min_deviation : ``robust_z`` only: a window is never an outlier below this root mean
        square deviation, however regular the app's training windows (their quantile alone
        would flag any change of an app whose windows were all alike).
    one_sided : columns whose deviations below the app's median count as none (a host
        doing less than usual is no threat: fewer peers, bytes or flows).
    per_app : one scorer and threshold per app (apps with fewer than ``min_app_windows``
        windows are not scored): nothing depends on other apps' windows, so models fitted on
        any split of the apps (one per streaming partition) agree with one fitted on all.
    random_state : seed of the scorer (fixed: results are reproducible).

    Fitted attributes: ``apps_`` (apps with their own normalisation), ``center_``/``scale_``
    (one row per app, last row global), ``estimators_`` and ``offsets_`` (one, or one per
    app of ``apps_`` with ``per_app``), ``offset_`` (0 with ``per_app``), ``n_features_in_``,
    ``reservoir_X_``/``reservoir_apps_``/``reservoir_key_`` (the training rows in (app hash,
    row hash) order, with those hashes) and
    ``n_windows_seen_``.
    """

    apps_: np.ndarray
    center_: np.ndarray
    scale_: np.ndarray
    offset_: float
    reservoir_X_: np.ndarray
    reservoir_apps_: np.ndarray
    reservoir_key_: np.ndarray
    n_windows_seen_: int

    estimators_: list[Any]
    offsets_: np.ndarray

    def __init__(self, scorer: str = "iforest", *, n_estimators: int = 100,
                 max_samples: int = 256, n_neighbors: int = 20, contamination: float = 0.01,
                 min_app_windows: int = 24, min_scale: float = 0.25, max_windows: int = 20_000,
                 per_app: bool = False, min_deviation: float = 0.0,
                 one_sided: tuple[int, ...] = (), random_state: int = 0) -> None:
        self.scorer = scorer
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.n_neighbors = n_neighbors
        self.contamination = contamination
        self.min_app_windows = min_app_windows
        self.min_scale = min_scale
        self.max_windows = max_windows
        self.per_app = per_app
        self.min_deviation = min_deviation
        self.one_sided = one_sided
        self.random_state = random_state

    # -- fitting ----------------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None, apps: Sequence[str] | np.ndarray | None = None
            ) -> BehaviourModel:
        """Fit on windows ``X`` (rows beyond ``max_windows`` are sampled by content hash);
        ``apps``: each row's app (default: one app for all)."""
        X = validate_data(self, X, reset=True, dtype=np.float64)
        for name in ("reservoir_X_", "reservoir_apps_", "reservoir_key_", "n_windows_seen_"):
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

    def collect(self, X: Any, apps: Sequence[str] | np.ndarray | None = None
                ) -> BehaviourModel:
        """Add windows to the reservoir without fitting (the pipeline collects audit windows
        batch by batch and fits once, with :meth:`fit_collected`)."""
        first = not hasattr(self, "reservoir_X_")
        X = validate_data(self, X, reset=first, dtype=np.float64)
        self._collect(X, self._apps(apps, len(X)))
        return self

    def fit_collected(self) -> BehaviourModel:
        """Fit on the reservoir (:meth:`collect`, :meth:`partial_fit`)."""
        if not len(getattr(self, "reservoir_X_", ())):
            raise ValueError("no windows collected: nothing to fit")
        self._check_params()
        self._fit_reservoir()
        return self

    @staticmethod
    def _apps(apps: Sequence[str] | np.ndarray | None, n: int) -> np.ndarray:
        if apps is None:
            return np.full(n, "", dtype=str)
        out = np.asarray(apps).astype(str)
        if out.shape != (n,):
            raise ValueError(f"apps has {out.shape[0] if out.ndim else 0} values for {n} rows")
        return out

    def _check_params(self) -> None:
        if self.scorer not in SCORERS:
            raise ValueError(f"scorer must be one of {', '.join(SCORERS)}, got {self.scorer!r}")
        if not 0 < self.contamination <= 0.5:
            raise ValueError(f"contamination must be in (0, 0.5], got {self.contamination}")

    def _add_and_fit(self, X: np.ndarray, apps: np.ndarray) -> BehaviourModel:
        self._check_params()
        self._collect(X, apps)
        self._fit_reservoir()
        return self

    def _collect(self, X: np.ndarray, apps: np.ndarray) -> None:
        """Merge rows into the reservoir: per app (or in all) the ``max_windows`` rows of
        smallest content hash, kept in (app hash, row hash) order. Both orders depend on the
        rows' content only, so any arrival order gives the same reservoir (rows with equal
        hashes are equal, bar a 2^-64 collision)."""
        self.n_windows_seen_ = getattr(self, "n_windows_seen_", 0) + len(X)
        key = np.stack([app_hash(apps), row_hash(X, apps)], axis=1)
        if getattr(self, "reservoir_X_", None) is not None:
            may = self._may_enter(key)  # the others would be cut below anyway
            if not may.all():
                X, apps, key = X[may], apps[may], key[may]
            if not len(X):
                return
            if self.per_app:  # merged into the sorted reservoir: no sort of all of it
                self._merge(X, apps, key)
                return
            X = np.concatenate([self.reservoir_X_, X])
            apps = np.concatenate([self.reservoir_apps_, apps])
            key = np.concatenate([self.reservoir_key_, key])
        if self.per_app or len(X) <= self.max_windows:
            order = np.lexsort((key[:, 1], key[:, 0]))
            if len(X) > self.max_windows:  # the first rows of each app in that order
                a = key[order, 0]
                head = np.r_[True, a[1:] != a[:-1]]
                starts = np.flatnonzero(head)
                rank = np.arange(len(a)) - starts[np.cumsum(head) - 1]
                order = order[rank < self.max_windows]
        else:
            keep = np.argsort(key[:, 1], kind="stable")[: self.max_windows]
            X, apps, key = X[keep], apps[keep], key[keep]
            order = np.lexsort((key[:, 1], key[:, 0]))
        self.reservoir_X_, self.reservoir_apps_ = X[order], apps[order]
        self.reservoir_key_ = key[order]

    def _merge(self, X: np.ndarray, apps: np.ndarray, key: np.ndarray) -> None:
        """Per app: the reservoir and new rows, as :meth:`_collect` would keep them from
        their concatenation (a stable sort puts a reservoir row before an equal new row):
        new rows sorted, inserted after their equals, each app's first ``max_windows``."""
        order = np.lexsort((key[:, 1], key[:, 0]))
        X, apps, key = X[order], apps[order], key[order]
        at = _after_equals(self.reservoir_key_, key)
        common = np.result_type(self.reservoir_apps_, apps)
        X = np.insert(self.reservoir_X_, at, X, axis=0)
        apps = np.insert(self.reservoir_apps_.astype(common), at, apps.astype(common))
        key = np.insert(self.reservoir_key_, at, key, axis=0)
        if len(X) > self.max_windows:
            a = key[:, 0]
            head = np.r_[True, a[1:] != a[:-1]]
            starts = np.flatnonzero(head)
            keep = np.arange(len(a)) - starts[np.cumsum(head) - 1] < self.max_windows
            X, apps, key = X[keep], apps[keep], key[keep]
        self.reservoir_X_, self.reservoir_apps_, self.reservoir_key_ = X, apps, key

    def _may_enter(self, key: np.ndarray) -> np.ndarray:
        """Rows that could enter the reservoir: where (their app's part of) it is full, only
        rows of smaller hash than its largest (on a tie the kept row comes first)."""
        rk = self.reservoir_key_
        if not self.per_app:
            if len(rk) < self.max_windows:
                return np.ones(len(key), dtype=bool)
            return np.asarray(key[:, 1] < rk[:, 1].max())
        a = rk[:, 0]  # the reservoir is in (app hash, row hash) order
        tail = np.flatnonzero(np.r_[a[1:] != a[:-1], True]) if len(a) else np.zeros(0, int)
        full = np.diff(np.r_[-1, tail]) >= self.max_windows
        apps, largest = a[tail[full]], rk[tail[full], 1]
        i = np.searchsorted(apps, key[:, 0])
        ic = np.minimum(i, max(len(apps) - 1, 0))
        capped = (i < len(apps)) & (apps[ic] == key[:, 0]) if len(apps) else np.zeros(
            len(key), dtype=bool)
        return np.asarray(~capped | (key[:, 1] < largest[ic] if len(apps) else True))

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
        groups = ([(Z[apps == a]) for a in own.tolist()] if self.per_app else [Z])
        self.estimators_ = [self._scorer(Zg) for Zg in groups]
        floor = -self.min_deviation if self.scorer == "robust_z" else np.inf
        self.offsets_ = np.array([min(float(np.quantile(self._raw(e, Zg), self.contamination)),
                                      floor)
                                  for e, Zg in zip(self.estimators_, groups, strict=True)])
        self.offset_ = 0.0 if self.per_app else float(self.offsets_[0])

    def _scorer(self, Z: np.ndarray) -> Any:
        if self.scorer == "iforest":
            from sklearn.ensemble import IsolationForest

            return IsolationForest(n_estimators=self.n_estimators,
                                   max_samples=min(self.max_samples, len(Z)),
                                   random_state=self.random_state).fit(Z)
        if self.scorer == "lof":
            from sklearn.neighbors import LocalOutlierFactor

            if len(Z) < 2:
                raise ValueError("LOF needs at least 2 samples, got 1 sample")
            return LocalOutlierFactor(n_neighbors=min(self.n_neighbors, len(Z) - 1),
                                      novelty=True).fit(Z)
        return None

    @staticmethod
    def _raw(estimator: Any, Z: np.ndarray) -> np.ndarray:
        if estimator is None:  # robust_z: minus the root mean square deviation
            return -np.sqrt(np.mean(Z * Z, axis=1))
        return np.asarray(estimator.score_samples(Z), dtype=np.float64)

    # -- scoring ----------------------------------------------------------------------------
    def _app_rows(self, apps: np.ndarray) -> np.ndarray:
        """Each app's row in ``center_``/``scale_`` (the last, global row if it has none)."""
        idx = np.searchsorted(self.apps_, apps)
        if not len(self.apps_):
            return np.zeros(len(apps), dtype=np.int64)
        hit = (idx < len(self.apps_)) & (self.apps_[np.minimum(idx, len(self.apps_) - 1)] == apps)
        return np.where(hit, idx, len(self.apps_))

    def deviations(self, X: Any, apps: Sequence[str] | np.ndarray | None = None) -> np.ndarray:
        """Per-feature robust deviations (z) of each row from its app's training windows."""
        check_is_fitted(self, "center_")
        X = np.asarray(X, dtype=np.float64)
        row = self._app_rows(self._apps(apps, len(X)))
        Z = np.clip((X - self.center_[row]) / self.scale_[row], -Z_CLIP, Z_CLIP)
        if self.one_sided:
            cols = [c for c in self.one_sided if c < Z.shape[1]]
            Z[:, cols] = np.maximum(Z[:, cols], 0.0)
        return Z

    def score_samples(self, X: Any, apps: Sequence[str] | np.ndarray | None = None
                      ) -> np.ndarray:
        """Normality of each window: lower is more abnormal. With ``per_app``, each app's
        score is shifted by its own threshold (so ``offset_`` is 0), and apps without their
        own normalisation score 0 (no opinion: not an outlier)."""
        check_is_fitted(self, "offset_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        a = self._apps(apps, len(X))
        Z = self.deviations(X, a)
        if not self.per_app:
            return self._raw(self.estimators_[0], Z)
        row = self._app_rows(a)
        out = np.zeros(len(X))
        for g in np.unique(row[row < len(self.apps_)]).tolist():
            m = row == g
            out[m] = self._raw(self.estimators_[g], Z[m]) - self.offsets_[g]
        return out

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


# -- the pipeline's side ----------------------------------------------------------------------

PIPELINE_PARAMS: dict[str, Any] = {
    "scorer": "robust_z", "per_app": True, "max_windows": 512, "contamination": 0.01,
    "min_app_windows": 24, "min_deviation": 1.5,
    "one_sided": tuple(i for i, f in enumerate(FEATURES) if not f.startswith("hour_"))}
"""The model a pipeline fits on its own audit windows. Per app, so that every streaming
partition (flows are routed by client workload) fits the model a replay fits; robust
z-scores, which ranked attack windows best on generated estates (notebook); only increases
of the counts, bytes and failure share count; a window needs a root mean square deviation of
at least 1.5 (one feature ~4.5 robust sigmas, or several ~2–3) however regular its app.
State bound: ``max_windows`` windows per app."""
SIGNALS_MAX = 1 << 16
"""(host, window) rule-based signals remembered at most (the oldest windows go first)."""
Signal = tuple[int, int, int, str, int]  # type code, port, proto, server address, server wid


class BehaviourGate:
    """Audit windows in, corroborated anomalies out.

    During the audit, closed host windows go to the model's reservoir; at the first
    post-audit window the model is fitted (unless a fitted model was shipped). After the
    audit, each closed window is scored; it becomes a ``behaviour_anomaly`` candidate only
    when it is anomalous *and* its host had a rule-based candidate in the same window
    (:meth:`note`), so the model adds evidence to an alert but never raises one alone.
    The candidate starts at the window's start (``judged_at``: its end plus ``delay``, the
    event time at which the window closes and is scored) and reuses the edge of one of the
    host's rule signals in the window (the least by type, port, protocol and server
    address: a choice that does not depend on arrival order, unlike the flow a volume
    threshold is crossed at); it carries the model's evidence: score, threshold and the
    features that drove it.

    Bounded: the model's reservoir (``max_windows`` per app), :data:`SIGNALS_MAX` signals,
    pruned as windows close."""

    def __init__(self, *, window: float, type_code: int, model: BehaviourModel | None = None,
                 delay: float = 0.0, top: int = 3) -> None:
        self.window = window
        self.delay = delay
        self.type_code = type_code
        self.top = top
        self.shipped = model is not None
        self.model_ = model if model is not None else BehaviourModel(**PIPELINE_PARAMS)
        self.signals_: dict[tuple[str, float], Signal] = {}
        self.counts_: dict[str, int] = {"audit_windows": 0, "scored": 0, "anomalous": 0,
                                        "corroborated": 0}

    @property
    def fitted(self) -> bool:
        return hasattr(self.model_, "offset_")

    def note(self, type_code: np.ndarray, start: np.ndarray, client_ip: Sequence[str],
             server: np.ndarray, port: np.ndarray, proto: np.ndarray,
             server_ip: Sequence[str]) -> None:
        """Remember rule-based candidates: per (host address, window), the least by (type,
        port, protocol, server address): the same whatever the batches and their order."""
        if not len(start):
            return
        win = np.floor(np.asarray(start, dtype=np.float64) / self.window) * self.window
        ips, ip_inv = np.unique(np.asarray(client_ip, dtype=str), return_inverse=True)
        sips, sip_inv = np.unique(np.asarray(server_ip, dtype=str), return_inverse=True)
        ip_inv, sip_inv = ip_inv.ravel(), sip_inv.ravel()
        order = np.lexsort((sip_inv, proto, port, type_code, win, ip_inv))
        key = np.stack([ip_inv, win], axis=1)[order]
        first = order[np.r_[True, (key[1:] != key[:-1]).any(axis=1)]]
        sig = self.signals_
        for i in first.tolist():
            k = (str(ips[ip_inv[i]]), float(win[i]))
            cand = (int(type_code[i]), int(port[i]), int(proto[i]), str(sips[sip_inv[i]]),
                    int(server[i]))
            old = sig.get(k)
            if old is None or cand[:4] < old[:4]:
                sig[k] = cand
        if len(sig) > SIGNALS_MAX:
            for k in sorted(sig, key=lambda k: (k[1], k[0]))[: len(sig) - SIGNALS_MAX]:
                del sig[k]

    def step(self, windows: Mapping[str, np.ndarray], key_of: Callable[[int], str],
             ) -> dict[str, Any] | None:
        """Closed host windows (``app`` as workload ids, ``key_of(wid)`` their keys): collect
        the audit ones, score the others; the corroborated anomalies as candidate columns
        (``rows`` into ``windows`` plus the signal's edge), or None."""
        n = len(windows["window"])
        if not n:
            return None
        X, _ = window_features({**windows, "app": np.zeros(n, dtype=np.int64)})
        wids, inv = np.unique(np.asarray(windows["app"], dtype=np.int64), return_inverse=True)
        apps = np.array([key_of(w) for w in wids.tolist()], dtype=str)[inv.ravel()]
        audit = np.asarray(windows["audit"], dtype=bool)
        # during the audit every edge is new at first sight (and when depends on batching):
        # the model learns that a host's windows use no edge the baseline does not know
        X[audit, FEATURES.index("new_edges")] = 0.0
        if audit.any():
            self.counts_["audit_windows"] += int(audit.sum())
            if not self.shipped and not self.fitted:
                self.model_.collect(X[audit], apps=apps[audit])
        out = None
        post = np.flatnonzero(~audit)
        if len(post) and not self.fitted and len(getattr(self.model_, "reservoir_X_", ())):
            self.model_.fit_collected()
        if len(post) and self.fitted:
            out = self._score(windows, X[post], apps[post], post)
        done = float(np.max(windows["window"])) - self.window
        for k in [k for k in self.signals_ if k[1] <= done]:
            del self.signals_[k]
        return out

    def _score(self, windows: Mapping[str, np.ndarray], X: np.ndarray, apps: np.ndarray,
               rows: np.ndarray) -> dict[str, Any] | None:
        self.counts_["scored"] += len(rows)
        d = self.model_.decision_function(X, apps=apps)
        bad = np.flatnonzero(d < 0)
        self.counts_["anomalous"] += len(bad)
        ips = np.asarray(windows["src_ip"])[rows[bad]].astype(str)
        wins = np.asarray(windows["window"], dtype=np.float64)[rows[bad]]
        keep = [i for i, (ip, w) in enumerate(zip(ips.tolist(), wins.tolist(), strict=True))
                if (ip, float(w)) in self.signals_]
        if not keep:
            return None
        self.counts_["corroborated"] += len(keep)
        sel = bad[keep]
        sigs = [self.signals_[(str(ips[i]), float(wins[i]))] for i in keep]
        Z = self.model_.deviations(X[sel], apps=apps[sel])
        top = np.argsort(-np.abs(Z), axis=1, kind="stable")[:, : self.top]
        raw = _raw_values(windows, rows[sel])
        extra = []
        for j, i in enumerate(sel.tolist()):
            # the largest deviation, and the next ones if they are large too (|z| >= 2)
            feats = [{"name": FEATURES[f], "z": round(float(Z[j, f]), 2),
                      "value": raw[FEATURES[f]][j],
                      "usual": _usual(FEATURES[f], self._center(apps[i])[f])}
                     for k, f in enumerate(top[j].tolist()) if k == 0 or abs(Z[j, f]) >= 2]
            extra.append({"model_score": round(float(d[i]), 4), "host": str(ips[keep[j]]),
                          "window_start": float(wins[keep[j]]), "window_s": self.window,
                          "judged_at": float(wins[keep[j]]) + self.window + self.delay,
                          "signal": int(sigs[j][0]), "drivers": feats})
        return {
            "rows": rows[sel],
            "type_code": np.full(len(sel), self.type_code, dtype=np.int64),
            "start": wins[keep],
            "server": np.array([s[4] for s in sigs], dtype=np.int64),
            "port": np.array([s[1] for s in sigs], dtype=np.int64),
            "proto": np.array([s[2] for s in sigs], dtype=np.int64),
            "server_ip": [s[3] for s in sigs],
            "client_ip": [str(ips[k]) for k in keep],
            "extra": extra,
        }

    def _center(self, app: str) -> np.ndarray:
        m = self.model_
        return np.asarray(m.center_[m._app_rows(np.array([app]))[0]])

    # -- state ------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The collected audit windows (none for a shipped model), fitted or not, the
        signals and counters; the fitted model itself is refitted from them on restore
        (deterministic)."""
        m = self.model_
        collected = not self.shipped and hasattr(m, "reservoir_X_")
        return {
            "fitted": self.fitted,
            "X": m.reservoir_X_ if collected else np.zeros((0, len(FEATURES))),
            "apps": m.reservoir_apps_ if collected else np.zeros(0, dtype=str),
            "seen": int(getattr(m, "n_windows_seen_", 0)) if collected else 0,
            "signals": [[k[0], k[1], *v] for k, v in sorted(self.signals_.items())],
            "counts": dict(self.counts_),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], **params: Any) -> Self:
        g = cls(**params)
        X = np.asarray(state["X"], dtype=np.float64)
        if not g.shipped and len(X):
            g.model_.collect(X, apps=np.asarray(state["apps"]).astype(str))
            g.model_.n_windows_seen_ = int(state["seen"])
            if state["fitted"]:
                g.model_.fit_collected()
        for ip, w, *v in state["signals"]:
            g.signals_[(str(ip), float(w))] = (int(v[0]), int(v[1]), int(v[2]), str(v[3]),
                                               int(v[4]))
        g.counts_.update(state["counts"])
        return g


_RAW = {"peers": "peers", "ports": "ports", "apps": "apps", "bytes_out": "bytes_out",
        "new_edges": "new_edges", "flows": "flows"}


def _raw_values(windows: Mapping[str, np.ndarray], rows: np.ndarray) -> dict[str, list[Any]]:
    """Each feature of ``rows`` in its own units (counts, bytes, share, hour of week)."""
    out: dict[str, list[Any]] = {f: np.asarray(windows[c])[rows].tolist()
                                 for f, c in _RAW.items()}
    flows = np.asarray(windows["flows"], dtype=np.float64)[rows]
    fails = np.asarray(windows["failures"], dtype=np.float64)[rows]
    out["failure_share"] = np.round(fails / np.maximum(flows, 1.0), 3).tolist()
    how = ((np.floor(np.asarray(windows["window"], dtype=np.float64)[rows] / HOUR) + _MONDAY)
           % WEEK_HOURS).astype(int).tolist()
    out["hour_sin"] = out["hour_cos"] = how
    return out


def _usual(feature: str, center: float) -> float:
    """An app's median of ``feature`` in the feature's own units."""
    if feature in _LOG1P:
        return round(float(np.expm1(center)), 1)
    if feature == "failure_share":
        return round(float(center), 3)
    return round(float(center), 2)  # hour_sin/hour_cos: a point on the week circle


__all__ = ["FEATURES", "PIPELINE_PARAMS", "SCORERS", "SIGNALS_MAX", "WINDOW_FIELDS",
           "BehaviourGate", "BehaviourModel", "normalisation_doc", "row_hash",
           "window_features"]
