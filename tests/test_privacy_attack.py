"""The inversion attack's scoring: a stored vector counts as recovered exactly when its nearest
candidate (by cosine, whatever the vectors' lengths) carries the token it came from."""

from __future__ import annotations

import numpy as np

from oblivio.detector.privacy import inversion_hits, inversion_recovery_rate


def test_hits_are_nearest_candidate_by_cosine_and_rate_is_their_share() -> None:
    candidates = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    candidate_ids = np.array([10, 20, 30])
    stored = np.array([[5.0, 0.1], [0.1, 0.2], [-0.3, 0.0], [0.9, 0.1]], dtype=np.float32)  # lengths differ
    true_ids = np.array([10, 20, 30, 20])  # the last one's nearest is 10: not recovered
    assert inversion_hits(stored, true_ids, candidates, candidate_ids).tolist() == [True, True, True, False]
    assert inversion_recovery_rate(stored, true_ids, candidates, candidate_ids) == 0.75
    assert inversion_recovery_rate(stored[:0], true_ids[:0], candidates, candidate_ids) == 0.0
