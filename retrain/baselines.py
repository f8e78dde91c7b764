"""Non-ML reference models, stored as plain JSON so they can be re-scored anywhere."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Baseline:
    """A fitted baseline: its strategy, the training positive rate and the seed it draws with."""

    strategy: str
    positive_rate: float
    seed: int

    def predict_scores(self, n_rows: int) -> np.ndarray:
        """Positive-class scores for n rows; random strategies are seeded, so re-scoring is exact."""
        rng = np.random.default_rng(self.seed)
        if self.strategy == "most_frequent":
            return np.full(n_rows, 1.0 if self.positive_rate > 0.5 else 0.0)
        if self.strategy == "stratified":
            return (rng.random(n_rows) < self.positive_rate).astype(float)
        if self.strategy == "uniform":
            return rng.integers(0, 2, size=n_rows).astype(float)
        raise ValueError(f"unknown baseline strategy {self.strategy!r}")

    def to_dict(self) -> dict[str, object]:
        """JSON-able form."""
        return asdict(self)


def fit_baselines(y_train: np.ndarray, strategies: tuple[str, ...], seed: int) -> list[Baseline]:
    """Fit every declared baseline on the training labels (0/1)."""
    rate = float(np.mean(y_train))
    return [Baseline(strategy, rate, seed) for strategy in strategies]


def from_dict(data: dict[str, object]) -> Baseline:
    """Rebuild a baseline from its JSON form."""
    return Baseline(str(data["strategy"]), float(data["positive_rate"]), int(data["seed"]))  # type: ignore[arg-type]
