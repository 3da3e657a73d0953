"""evaluation/stats.py on cases whose answers are known by hand."""
import numpy as np
import pytest

from vlm_spatial.evaluation.stats import bootstrap_mean, paired_difference


def test_all_equal_data_has_a_zero_width_interval():
    for value in (0.0, 1.0):
        e = bootstrap_mean(np.full((3, 50), value))
        assert (e.mean, e.lo, e.hi, e.n_seeds, e.n_questions) == (value, value, value, 3, 50)


def test_known_intervals_from_questions_and_from_seeds():
    # one seed, two questions (0, 1): a replicate's mean is 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4,
    # so the 2.5th and 97.5th percentiles are 0 and 1
    e = bootstrap_mean([[0, 1]], num_samples=4000)
    assert (e.mean, e.lo, e.hi) == (0.5, 0.0, 1.0)
    # two seeds, one always right and one always wrong: the same from the seed draw alone (questions
    # agree within a seed, so drawing them changes nothing)
    e = bootstrap_mean(np.stack([np.ones(40), np.zeros(40)]), num_samples=4000)
    assert (e.mean, e.lo, e.hi) == (0.5, 0.0, 1.0)
    # many questions of one seed: close to the normal interval of a proportion
    rng = np.random.default_rng(1)
    x = (rng.random((1, 2000)) < 0.7).astype(float)
    e = bootstrap_mean(x, num_samples=4000)
    half = 1.96 * np.sqrt(x.mean() * (1 - x.mean()) / x.size)
    assert e.lo == pytest.approx(x.mean() - half, abs=0.005) and e.hi == pytest.approx(x.mean() + half, abs=0.005)


def test_fixed_rng_is_deterministic():
    x = np.random.default_rng(0).random((3, 30)) < 0.5
    assert bootstrap_mean(x, seed=7) == bootstrap_mean(x, seed=7)
    assert paired_difference(x, x[::-1], seed=3) == paired_difference(x, x[::-1], seed=3)


def test_paired_comparison_detects_a_real_difference():
    a, b = np.ones((3, 40)), np.zeros((3, 40))
    c = paired_difference(a, b, names=("rope", "base"), num_samples=999)
    assert (c.diff, c.lo, c.hi) == (1.0, 1.0, 1.0)
    assert c.p_value == pytest.approx(2 / 1000) and c.detectable and c.verdict == "rope better"
    # a small but consistent gain on the same questions: B is right on 80 of 100, A on those and 10 more
    b = np.zeros((3, 100))
    b[:, :80] = 1
    a = b.copy()
    a[:, 80:90] = 1
    c = paired_difference(a, b, num_samples=2000)
    assert c.diff == pytest.approx(0.1) and c.lo > 0 and c.p_value < 0.01 and c.detectable


def test_paired_comparison_does_not_detect_noise_or_identity():
    row = np.random.default_rng(0).random(60) < 0.6
    c = paired_difference(np.tile(row, (3, 1)), np.tile(row, (2, 1)))  # identical answers on every question
    assert (c.diff, c.lo, c.hi, c.p_value) == (0.0, 0.0, 0.0, 1.0)
    assert not c.detectable and c.verdict == "no detectable difference"
    # the same three seeds on both sides: seeds are drawn independently for each variant, so the
    # seed spread shows in the interval, and it straddles 0
    same = np.random.default_rng(0).random((3, 60)) < 0.6
    c = paired_difference(same, same)
    assert c.diff == 0.0 and c.lo < 0 < c.hi and not c.detectable
    # the same accuracy on complementary questions: the per-question differences are +1 and -1
    a = np.tile([1.0, 0.0], (2, 30))
    c = paired_difference(a, 1 - a)
    assert c.diff == 0.0 and c.lo < 0 < c.hi and c.p_value > 0.5 and not c.detectable


def test_paired_comparison_needs_the_same_questions():
    with pytest.raises(ValueError, match="same questions"):
        paired_difference(np.ones((2, 5)), np.ones((2, 6)), names=("clip", "aimv2"))
    with pytest.raises(ValueError, match=r"seeds, questions"):
        bootstrap_mean(np.ones(5))
