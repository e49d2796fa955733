"""The CKA estimator: its properties, and agreement with a plain full-batch implementation written here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_tl.analysis import cka as cka_module
from hf_tl.analysis.cka import MinibatchCKA, cka, gram


def reference_hsic(K: np.ndarray, L: np.ndarray, unbiased: bool) -> float:
    """Song et al. 2012's unbiased HSIC, or the biased tr(KHLH)/(n-1)², straight from the formulas."""
    n = len(K)
    if not unbiased:
        H = np.eye(n) - np.ones((n, n)) / n
        return float(np.trace(K @ H @ L @ H)) / (n - 1) ** 2
    Kt, Lt = K - np.diag(np.diag(K)), L - np.diag(np.diag(L))
    ones = np.ones(n)
    trace = np.trace(Kt @ Lt)
    sums = (ones @ Kt @ ones) * (ones @ Lt @ ones) / ((n - 1) * (n - 2))
    rows = 2 / (n - 2) * (ones @ Kt @ Lt @ ones)
    return float((trace + sums - rows) / (n * (n - 3)))


def reference_cka(X: np.ndarray, Y: np.ndarray, unbiased: bool = True) -> float:
    K, L = X @ X.T, Y @ Y.T
    return reference_hsic(K, L, unbiased) / np.sqrt(reference_hsic(K, K, unbiased) * reference_hsic(L, L, unbiased))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def related(rng, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Two feature sets that share structure (Y is a noisy nonlinear map of X), so CKA is well inside (0, 1)."""
    X = rng.normal(size=(n, 12))
    Y = np.tanh(X @ rng.normal(size=(12, 30))) + 0.5 * rng.normal(size=(n, 30))
    return X, Y


def test_cka_of_x_with_itself_is_one(rng):
    X, _ = related(rng)
    assert cka(X, X) == pytest.approx(1.0, abs=1e-12)
    assert cka(X, X, unbiased=False) == pytest.approx(1.0, abs=1e-12)


def test_cka_is_symmetric(rng):
    X, Y = related(rng)
    assert cka(X, Y) == pytest.approx(cka(Y, X), abs=1e-12)
    assert 0.1 < cka(X, Y) < 0.95  # a non-trivial value, so the equalities above say something


def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling(rng):
    X, Y = related(rng)
    Q, _ = np.linalg.qr(rng.normal(size=(X.shape[1], X.shape[1])))
    base = cka(X, Y)
    assert cka(X @ Q, Y) == pytest.approx(base, abs=1e-10)
    assert cka(3.7 * X, Y) == pytest.approx(base, abs=1e-10)
    assert cka(X, 0.01 * Y) == pytest.approx(base, abs=1e-10)


@pytest.mark.parametrize("unbiased", [True, False])
def test_cka_matches_a_plain_full_batch_implementation(rng, unbiased):
    X, Y = related(rng, n=45)
    assert cka(X, Y, unbiased=unbiased) == pytest.approx(reference_cka(X, Y, unbiased), rel=1e-10)


def test_cka_of_independent_high_dimensional_features_is_near_zero(rng):
    X, Y = rng.normal(size=(200, 5000)), rng.normal(size=(200, 5000))
    assert abs(cka(X, Y)) < 0.03
    # The biased estimator is far from 0 here: the reason the unbiased one is the default.
    assert cka(X, Y, unbiased=False) > 0.5


def test_cka_takes_torch_tensors_and_returns_a_float(rng):
    X, Y = related(rng)
    value = cka(torch.from_numpy(X).float(), torch.from_numpy(Y).float())
    assert isinstance(value, float)
    assert value == pytest.approx(cka(X, Y), abs=1e-5)


def test_cka_refuses_too_few_examples_and_mismatched_rows(rng):
    with pytest.raises(ValueError, match="at least 4"):
        cka(rng.normal(size=(3, 5)), rng.normal(size=(3, 5)))
    with pytest.raises(ValueError, match="same n"):
        cka(rng.normal(size=(10, 5)), rng.normal(size=(11, 5)))


def test_one_minibatch_of_every_example_equals_cka_for_every_layer_pair(rng):
    layers_a = [rng.normal(size=(40, d)) for d in (3, 8, 20)]
    layers_b = [np.tanh(layers_a[1] @ rng.normal(size=(8, d))) for d in (5, 9)]
    accumulator = MinibatchCKA()
    accumulator.update([gram(torch.from_numpy(x)) for x in layers_a], [gram(torch.from_numpy(y)) for y in layers_b])
    expected = np.array([[cka(x, y) for y in layers_b] for x in layers_a])
    np.testing.assert_allclose(accumulator.result(), expected, rtol=1e-10, atol=1e-12)
    assert accumulator.examples == 40 and accumulator.batches == 1


def test_minibatches_sum_each_hsic_then_take_cka_from_the_sums(rng):
    X, Y = related(rng, n=48)
    accumulator = MinibatchCKA()
    cross = self_x = self_y = 0.0
    for rows in (slice(0, 16), slice(16, 32), slice(32, 48)):
        x, y = X[rows], Y[rows]
        accumulator.update([gram(torch.from_numpy(x))], [gram(torch.from_numpy(y))])
        cross += reference_hsic(x @ x.T, y @ y.T, True)
        self_x += reference_hsic(x @ x.T, x @ x.T, True)
        self_y += reference_hsic(y @ y.T, y @ y.T, True)
    assert accumulator.result()[0, 0] == pytest.approx(cross / np.sqrt(self_x * self_y), rel=1e-10)
    assert accumulator.result()[0, 0] != pytest.approx(cka(X, Y), rel=1e-6)  # not the full-batch value in disguise


def test_self_similarity_update_equals_passing_the_same_grams_twice(rng):
    once, twice = MinibatchCKA(), MinibatchCKA()
    for _ in range(3):
        grams = [gram(torch.from_numpy(x)) for x in related(rng)]
        once.update(grams)
        twice.update(grams, grams)
    np.testing.assert_allclose(once.result(), twice.result(), rtol=1e-14)
    np.testing.assert_allclose(np.diag(once.result()), 1.0, rtol=1e-12)


def test_gram_in_feature_slices_equals_the_whole_product(rng, monkeypatch):
    X = torch.from_numpy(rng.normal(size=(10, 1000))).float()
    monkeypatch.setattr(cka_module, "GRAM_CHUNK", 10 * 64)  # slices of 64 features
    sliced = gram(X)
    assert sliced.dtype == torch.float64
    shifted = X.double() - X[:1].double()  # `gram` translates by the first row (HSIC does not change)
    torch.testing.assert_close(sliced, shifted @ shifted.T, rtol=1e-12, atol=1e-9)


def test_accumulator_state_does_not_grow_with_examples(rng):
    """Memory constant in the number of examples: only the (layers_a, layers_b) sums are kept."""
    accumulator = MinibatchCKA()
    sizes = []
    for _ in range(5):
        batch = [gram(torch.from_numpy(rng.normal(size=(32, 6)))) for _ in range(3)]
        accumulator.update(batch, batch[:2])
        sizes.append(accumulator.cross.nbytes + accumulator.self_a.nbytes + accumulator.self_b.nbytes)
    assert accumulator.cross.shape == (3, 2) and len(set(sizes)) == 1
    assert accumulator.examples == 160


def test_features_that_do_not_vary_give_nan_not_rounding_noise(rng):
    X, _ = related(rng)
    same_row = np.tile(rng.normal(size=(1, 16)), (len(X), 1)).astype(np.float32)  # e.g. a class token before any block
    assert np.isnan(cka(X, same_row)) and np.isnan(cka(same_row, same_row))
    assert cka(X, X + 1e3) == pytest.approx(1.0, abs=1e-10)  # a large offset neither looks constant nor cancels
