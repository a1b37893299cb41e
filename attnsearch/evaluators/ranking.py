"""Rank correlations (Spearman rho, Kendall tau-b) with ties, for proxy-fidelity checks.

scipy.stats is used when installed; these pure-Python versions are the fallback and are tested
against it.
"""
from __future__ import annotations

import math


def _check(x, y):
    if len(x) != len(y):
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    if len(x) < 2:
        raise ValueError("need at least two points for a rank correlation")


def average_ranks(values) -> list[float]:
    """1-based ranks, ties sharing the mean of their positions."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _pearson(a, b) -> float:
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    va = sum((x - ma) ** 2 for x in a)
    vb = sum((y - mb) ** 2 for y in b)
    return cov / math.sqrt(va * vb) if va > 0 and vb > 0 else float("nan")


def spearman_own(x, y) -> float:
    _check(x, y)
    return _pearson(average_ranks(list(x)), average_ranks(list(y)))


def kendall_own(x, y) -> float:
    """Kendall tau-b: (concordant - discordant) / sqrt((n0 - ties_x) (n0 - ties_y))."""
    _check(x, y)
    n = len(x)
    concordant = discordant = ties_x = ties_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denom = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return (concordant - discordant) / denom if denom > 0 else float("nan")


def spearman(x, y) -> float:
    _check(x, y)
    try:
        from scipy.stats import spearmanr
    except ImportError:
        return spearman_own(x, y)
    return float(spearmanr(x, y).statistic)


def kendall(x, y) -> float:
    _check(x, y)
    try:
        from scipy.stats import kendalltau
    except ImportError:
        return kendall_own(x, y)
    return float(kendalltau(x, y).statistic)
