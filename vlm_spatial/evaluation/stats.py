"""Accuracy with bootstrap intervals over seeds and questions, and paired comparisons of variants.

The data of one variant on one question family is a 0/1 matrix `correct [S seeds, Q questions]`
(every seed answers the same Q questions). Both sources of variation count: which seeds were run
and which questions were drawn. The bootstrap is hierarchical over this crossed design: each
replicate draws S seeds with replacement, then Q questions with replacement (one question draw
shared by the drawn seeds, since every seed answered the same questions), and takes the mean of
the drawn sub-matrix. The 95% interval is the 2.5th-97.5th percentile of the replicates.

A paired comparison of variants A and B on the same questions draws the questions once per
replicate for both (the pairing: a hard question is hard for both) and the seeds of each variant
independently (seed k of A and seed k of B are different models), and takes the difference of the
means. The two-sided p-value is `2 * min(P(d* <= 0), P(d* >= 0))` over the replicates (with the
usual +1 correction, never 0), capped at 1. An interval that contains 0 is reported as "no
detectable difference". Everything is deterministic given `seed`.
"""
from __future__ import annotations

import dataclasses

import numpy as np

LEVEL = 0.95


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A mean with its bootstrap interval [lo, hi] at `level`, from `n_seeds` x `n_questions`."""

    mean: float
    lo: float
    hi: float
    n_seeds: int
    n_questions: int
    level: float = LEVEL

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Mean difference A - B with its paired-bootstrap interval and two-sided p-value."""

    a: str
    b: str
    diff: float
    lo: float
    hi: float
    p_value: float
    n_questions: int
    level: float = LEVEL

    @property
    def detectable(self) -> bool:
        """Whether the interval excludes 0 (else: no detectable difference)."""
        return self.lo > 0 or self.hi < 0

    @property
    def verdict(self) -> str:
        if not self.detectable:
            return "no detectable difference"
        return f"{self.a} better" if self.diff > 0 else f"{self.b} better"

    def to_dict(self) -> dict:
        return dict(dataclasses.asdict(self), detectable=self.detectable, verdict=self.verdict)


def _matrix(correct, what: str) -> np.ndarray:
    m = np.asarray(correct, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 1:
        raise ValueError(f"{what}: expected a [seeds, questions] matrix with at least one of each, got shape {m.shape}")
    return m


def _draw_means(m: np.ndarray, seeds: np.ndarray, questions: np.ndarray) -> np.ndarray:
    """Mean of `m[seeds[r]][:, questions[r]]` for every replicate r: `[R]` (seeds `[R,S]`, questions `[R,Q]`).

    Computed without materialising `[R,S,Q]`: the mean over drawn seeds of the drawn columns equals
    the drawn columns of the seed-weighted row mean."""
    S, R = m.shape[0], seeds.shape[0]
    weights = np.zeros((R, S))
    np.add.at(weights, (np.repeat(np.arange(R), S), seeds.ravel()), 1.0 / S)
    rows = weights @ m  # [R, Q]: per replicate, the mean over its drawn seeds of every question
    return np.take_along_axis(rows, questions, axis=1).mean(axis=1)


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    a = (1 - level) / 2
    lo, hi = np.quantile(values, [a, 1 - a])
    return float(lo), float(hi)


def bootstrap_mean(correct, *, num_samples: int = 2000, seed: int = 0, level: float = LEVEL) -> Estimate:
    """Mean of `correct` (`[S, Q]` 0/1 or scores) with its hierarchical bootstrap interval (seeds,
    then questions; see the module docstring)."""
    m = _matrix(correct, "correct")
    S, Q = m.shape
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, S, size=(num_samples, S))
    questions = rng.integers(0, Q, size=(num_samples, Q))
    lo, hi = _interval(_draw_means(m, seeds, questions), level)
    return Estimate(float(m.mean()), lo, hi, S, Q, level)


def paired_difference(a, b, *, names: tuple[str, str] = ("A", "B"), num_samples: int = 2000, seed: int = 0,
                      level: float = LEVEL) -> Comparison:
    """Mean of `a` minus mean of `b` (`[S_a, Q]`, `[S_b, Q]`, the same Q questions in the same
    order) with its paired bootstrap interval and two-sided p-value (see the module docstring)."""
    ma, mb = _matrix(a, names[0]), _matrix(b, names[1])
    if ma.shape[1] != mb.shape[1]:
        raise ValueError(f"{names[0]} answered {ma.shape[1]} questions, {names[1]} {mb.shape[1]}: a paired "
                         f"comparison needs the same questions")
    Q = ma.shape[1]
    rng = np.random.default_rng(seed)
    questions = rng.integers(0, Q, size=(num_samples, Q))
    seeds_a = rng.integers(0, ma.shape[0], size=(num_samples, ma.shape[0]))
    seeds_b = rng.integers(0, mb.shape[0], size=(num_samples, mb.shape[0]))
    d = _draw_means(ma, seeds_a, questions) - _draw_means(mb, seeds_b, questions)
    lo, hi = _interval(d, level)
    p = 2 * min((np.sum(d <= 0) + 1) / (num_samples + 1), (np.sum(d >= 0) + 1) / (num_samples + 1))
    return Comparison(names[0], names[1], float(ma.mean() - mb.mean()), lo, hi, float(min(1.0, p)), Q, level)
