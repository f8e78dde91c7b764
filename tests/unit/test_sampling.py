"""retrain/models/sampling.py: the search's sample of train rows (`candidates.search_rows`)."""

from __future__ import annotations

import numpy as np

from retrain.models.sampling import MIN_SEARCH_CLASS_ROWS, search_positions


def test_search_sample_keeps_label_shares_and_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    y = np.where(rng.random(100_000) < 0.237, 1, 0)
    picked = search_positions(y, 10_000, seed=42, stratify=True)
    assert picked is not None and len(picked) == 10_000 and len(np.unique(picked)) == 10_000
    assert np.all(np.diff(picked) > 0), "sorted positions: the sample keeps the table's row order"
    assert abs(y[picked].mean() - y.mean()) < 1e-4, "each label keeps its share (largest remainders)"
    np.testing.assert_array_equal(picked, search_positions(y, 10_000, seed=42, stratify=True))
    assert not np.array_equal(picked, search_positions(y, 10_000, seed=7, stratify=True))


def test_search_sample_keeps_a_rare_class_and_all_rows_when_small() -> None:
    y = np.array(["a"] * 5000 + ["rare"] * 12)
    picked = search_positions(y, 500, seed=0, stratify=True)
    assert picked is not None and (y[picked] == "rare").sum() == MIN_SEARCH_CLASS_ROWS
    assert search_positions(y, None, seed=0, stratify=True) is None, "null: every row"
    assert search_positions(y, 6000, seed=0, stratify=True) is None, "more than the table: every row"
    plain = search_positions(np.arange(1000.0), 100, seed=0, stratify=False)
    assert plain is not None and len(plain) == 100, "regression: a plain seeded sample"
