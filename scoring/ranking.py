"""Ranking codes by the generated tests they pass (`dual_agreement`): inference ranks its candidates with
it, and the evaluation's ranked@1 picks its code with it.
"""
from __future__ import annotations

import numpy as np


def dual_agreement(passes, ok=None) -> tuple[np.ndarray, int]:
    """CodeT dual agreement (Chen et al., 2022, "CodeT: Code Generation with Generated Tests").

    passes: (n, T) bool, code i passes generated test t; ok: (n,) bool, codes that are well formed
    (others join no group and are chosen only when none is ok). Codes are grouped by the exact set of
    tests they pass; a group scores (#codes in it) x (#tests it passes), and every code gets its group's
    score. Returns (scores (n,), index of the chosen code): the first code of the best group; ties go to
    the larger group, then the earlier code."""
    n = len(passes)
    passes = np.asarray(passes, dtype=bool).reshape(n, -1)
    ok = np.ones(n, dtype=bool) if ok is None else np.asarray(ok, dtype=bool)
    groups: dict[bytes, list[int]] = {}
    for i in np.flatnonzero(ok):
        groups.setdefault(passes[i].tobytes(), []).append(int(i))
    scores = np.zeros(n)
    for members in groups.values():
        scores[members] = len(members) * passes[members[0]].sum()
    best = max(groups.values(), key=lambda m: (scores[m[0]], len(m), -m[0]), default=[0])  # no ok code: the first
    return scores, best[0]
