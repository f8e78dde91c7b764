"""Non-ML reference models, stored as plain JSON so they can be re-scored anywhere.

Classification: `most_frequent` (the majority class with certainty), `stratified` (random classes
drawn from the training priors) and `uniform` (random classes, equally likely). Regression: `mean`
and `median` of the training target. Scores come in the task's shape (see retrain/metrics.py) and
random strategies are seeded, so re-scoring on test is exact.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

CLASSIFICATION_STRATEGIES = ("most_frequent", "stratified", "uniform")
REGRESSION_STRATEGIES = ("mean", "median")


@dataclass(frozen=True)
class Baseline:
    """A fitted baseline: strategy, task, what it learnt from train (class priors or a value), its seed."""

    strategy: str
    task: str
    seed: int
    priors: tuple[float, ...] = ()
    value: float | None = None

    def predict_scores(self, n_rows: int) -> np.ndarray:
        """Scores for n rows in the task's shape: P(positive), (n, k) probabilities, or predictions."""
        if self.task == "regression":
            if self.strategy not in REGRESSION_STRATEGIES:
                raise ValueError(f"unknown baseline strategy {self.strategy!r} for regression")
            return np.full(n_rows, float(self.value))  # type: ignore[arg-type]
        rng = np.random.default_rng(self.seed)
        priors = np.asarray(self.priors, dtype=float)
        k = len(priors)
        if self.task == "binary":
            # kept identical to the binary-only version, so Adult baselines score as before
            if self.strategy == "most_frequent":
                return np.full(n_rows, 1.0 if priors[1] > 0.5 else 0.0)
            if self.strategy == "stratified":
                return (rng.random(n_rows) < priors[1]).astype(float)
            if self.strategy == "uniform":
                return rng.integers(0, 2, size=n_rows).astype(float)
            raise ValueError(f"unknown baseline strategy {self.strategy!r} for classification")
        if self.strategy == "most_frequent":
            classes = np.full(n_rows, int(np.argmax(priors)))
        elif self.strategy == "stratified":
            classes = rng.choice(k, size=n_rows, p=priors)
        elif self.strategy == "uniform":
            classes = rng.integers(0, k, size=n_rows)
        else:
            raise ValueError(f"unknown baseline strategy {self.strategy!r} for classification")
        return np.eye(k)[classes]

    def to_dict(self) -> dict[str, object]:
        """JSON-able form."""
        data = asdict(self)
        data["priors"] = list(self.priors)
        return data


def fit_baselines(
    y_train: np.ndarray, strategies: tuple[str, ...], seed: int, *, task: str = "binary", n_classes: int = 2
) -> list[Baseline]:
    """Fit every declared baseline on the encoded training target (class indices, or floats)."""
    y = np.asarray(y_train)
    if task == "regression":
        stats = {"mean": float(np.mean(y)), "median": float(np.median(y))}
        return [Baseline(s, task, seed, value=stats.get(s)) for s in strategies]
    counts = np.bincount(y.astype(np.int64), minlength=n_classes)[:n_classes]
    priors = tuple(float(c) for c in counts / max(1, counts.sum()))
    return [Baseline(s, task, seed, priors=priors) for s in strategies]


def from_dict(data: dict[str, object]) -> Baseline:
    """Rebuild a baseline from its JSON form."""
    value = data.get("value")
    return Baseline(
        strategy=str(data["strategy"]),
        task=str(data["task"]),
        seed=int(data["seed"]),  # type: ignore[call-overload]
        priors=tuple(float(p) for p in data.get("priors") or ()),  # type: ignore[union-attr]
        value=None if value is None else float(value),  # type: ignore[arg-type]
    )
