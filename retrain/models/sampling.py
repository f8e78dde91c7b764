"""The rows a hyperparameter search sees on a large table (`candidates.search_rows`).

Its own module, imported by the candidates stage alone: the search sample is the stage's business, and a module
of the split stage would put that stage's code (and its ingest imports) into the candidates cache key.
"""

from __future__ import annotations

import numpy as np

MIN_SEARCH_CLASS_ROWS = 10
"""A class rarer than this in the search sample is kept whole up to this many rows, so every CV fold sees it."""


def search_positions(y: np.ndarray, rows: int | None, seed: int, *, stratify: bool) -> np.ndarray | None:
    """Sorted positions of a seeded sample of about `rows` rows for the hyperparameter search; None: every row.

    `stratify` (classification): each label keeps its share (largest remainders), and a class gets at least
    min(its rows, MIN_SEARCH_CLASS_ROWS), so the sample can exceed `rows` by a few. Same y and seed, same rows.
    """
    n = len(y)
    if rows is None or rows >= n:
        return None
    rng = np.random.default_rng(seed)
    if not stratify:
        return np.sort(rng.choice(n, size=rows, replace=False))
    _, codes = np.unique(np.asarray(y), return_inverse=True)
    counts = np.bincount(codes)
    quota = counts * rows / n
    take = np.floor(quota).astype(np.int64)
    order = np.argsort(-(quota - take), kind="stable")
    take[order[: rows - int(take.sum())]] += 1
    take = np.maximum(take, np.minimum(counts, MIN_SEARCH_CLASS_ROWS))
    members = np.argsort(codes, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(counts)])
    chosen = [
        rng.choice(members[bounds[c] : bounds[c + 1]], size=int(take[c]), replace=False) for c in range(len(counts))
    ]
    return np.sort(np.concatenate(chosen))
