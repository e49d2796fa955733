"""The backbone-selection scores against independent implementations and cases with known answers: the linear probe
against scikit-learn, k-NN against a direct numpy version, LogME against the paper's Algorithm 1 written in numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from hf_tl.selection.scores import (
    knn_accuracy,
    knn_predictions,
    linear_probe_accuracy,
    linear_probe_predictions,
    logme,
    score_all,
)


def classification(n_train: int = 300, n_val: int = 200, d: int = 20, classes: int = 4, seed: int = 0):
    """A seeded, not linearly separable problem, split into torch train and validation sets."""
    x, y = make_classification(
        n_samples=n_train + n_val,
        n_features=d,
        n_informative=8,
        n_classes=classes,
        n_clusters_per_class=1,
        flip_y=0.05,
        random_state=seed,
    )
    x, y = torch.tensor(x), torch.tensor(y)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def clusters(n: int, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two tight clusters around orthogonal directions: separable linearly and by cosine, with no doubt."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    centres = torch.eye(d)[:2] * 10
    return centres[y] + 0.1 * torch.randn(n, d, generator=generator), y


# --- linear probe ---------------------------------------------------------------------------------------------


def test_probe_agrees_with_scikit_learn():
    train_x, train_y, val_x, val_y = classification()
    scaler = StandardScaler().fit(train_x.numpy())
    reference = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(scaler.transform(train_x.numpy()), train_y)
    expected = reference.predict(scaler.transform(val_x.numpy()))

    predicted = linear_probe_predictions(train_x, train_y, val_x).numpy()

    assert np.mean(predicted == expected) >= 0.98
    sklearn_accuracy = np.mean(expected == val_y.numpy())
    assert linear_probe_accuracy(train_x, train_y, val_x, val_y) == pytest.approx(sklearn_accuracy, abs=0.01)


def test_probe_is_perfect_on_separable_data():
    x, y = clusters(120)
    assert linear_probe_accuracy(x[:80], y[:80], x[80:], y[80:]) == 1.0


def test_probe_repeats_exactly_with_a_seed():
    train_x, train_y, val_x, _ = classification(n_train=200, n_val=100)
    first = linear_probe_predictions(train_x, train_y, val_x, seed=3)
    assert torch.equal(first, linear_probe_predictions(train_x, train_y, val_x, seed=3))


def test_probe_predicts_the_training_label_ids():
    """Labels need not be 0..C-1: the probe answers in the ids it was given."""
    x, y = clusters(120)
    ids = torch.tensor([3, 7])[y]
    predicted = linear_probe_predictions(x[:80], ids[:80], x[80:])
    assert torch.equal(predicted, ids[80:])


# --- k-NN -------------------------------------------------------------------------------------------------------


def knn_numpy(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, k: int, temperature: float) -> np.ndarray:
    """DINO's weighted k-NN written out directly: cosine similarities, the k largest, exp(sim / T) votes."""
    train = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    val = val_x / np.linalg.norm(val_x, axis=1, keepdims=True)
    similarity = val @ train.T
    nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    votes = np.zeros((len(val), train_y.max() + 1))
    for row, (indices, sims) in enumerate(zip(nearest, np.take_along_axis(similarity, nearest, 1), strict=True)):
        np.add.at(votes[row], train_y[indices], np.exp(sims / temperature))
    return votes.argmax(1)  # the first maximum: the lowest class id


@pytest.mark.parametrize("chunk_rows", [None, 7])
def test_knn_matches_a_direct_numpy_implementation(chunk_rows):
    generator = torch.Generator().manual_seed(0)
    train_x, val_x = torch.randn(300, 16, generator=generator), torch.randn(100, 16, generator=generator)
    train_y = torch.randint(0, 5, (300,), generator=generator)

    predicted = knn_predictions(train_x, train_y, val_x, chunk_rows=chunk_rows)

    expected = knn_numpy(train_x.numpy(), train_y.numpy(), val_x.numpy(), k=20, temperature=0.07)
    assert np.array_equal(predicted.numpy(), expected)
    assert len(set(expected)) > 1  # a real test: the votes differ between points


def test_knn_clamps_k_to_the_training_set():
    generator = torch.Generator().manual_seed(1)
    train_x, val_x = torch.randn(30, 8, generator=generator), torch.randn(50, 8, generator=generator)
    train_y = torch.randint(0, 3, (30,), generator=generator)

    predicted = knn_predictions(train_x, train_y, val_x, k=1000, temperature=0.5)

    expected = knn_numpy(train_x.numpy(), train_y.numpy(), val_x.numpy(), k=30, temperature=0.5)
    assert np.array_equal(predicted.numpy(), expected)


def test_knn_is_perfect_on_separated_clusters():
    x, y = clusters(200)
    assert knn_accuracy(x[:150], y[:150], x[150:], y[150:]) == 1.0


def test_knn_breaks_a_tie_towards_the_lowest_class():
    train_x, train_y = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([1, 0])
    assert knn_predictions(train_x, train_y, torch.tensor([[1.0, 1.0]]), k=2).tolist() == [0]


# --- LogME ------------------------------------------------------------------------------------------------------


def logme_algorithm1(f: np.ndarray, y: np.ndarray) -> float:
    """You et al. 2021, Algorithm 1, as written: A = αI + βFᵀF, m = βA⁻¹Fᵀy, γ = Σ βσᵢ/(α + βσᵢ), α ← γ/mᵀm,
    β ← (n − γ)/‖Fm − y‖², then the log evidence (Eq. 2) per example, averaged over the classes' one-hot
    columns. Iterated until the evidence stops changing (a maximum at a bound of α/β is only reached in the
    limit)."""
    n, d = f.shape
    ftf = f.T @ f
    sigma = np.clip(np.linalg.eigvalsh(ftf), 0, None)
    evidences = []
    for c in np.unique(y):
        target = (y == c).astype(np.float64)
        alpha, beta, previous = 1.0, 1.0, None
        for _ in range(10_000):
            a = alpha * np.eye(d) + beta * ftf
            m = beta * np.linalg.solve(a, f.T @ target)
            residual = np.sum((f @ m - target) ** 2)
            evidence = (
                n / 2 * np.log(beta)
                + d / 2 * np.log(alpha)
                - n / 2 * np.log(2 * np.pi)
                - beta / 2 * residual
                - alpha / 2 * (m @ m)
                - np.linalg.slogdet(a)[1] / 2
            ) / n
            if previous is not None and abs(evidence - previous) <= 1e-13:
                break
            previous = evidence
            gamma = np.sum(beta * sigma / (alpha + beta * sigma))
            alpha, beta = gamma / (m @ m), (n - gamma) / residual
        evidences.append(evidence)
    return float(np.mean(evidences))


def labelled_features(n: int, d: int, seed: int = 0, noise: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Five classes: the one-hot labels plus small noise in the first five columns, Gaussian noise of std `noise`
    in the others. The labels are a linear function of the features, up to the small noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, n)
    x = noise * rng.normal(size=(n, d))
    x[:, :5] = np.eye(5)[y] + 0.1 * rng.normal(size=(n, 5))
    return x, y


def noise_like(x: np.ndarray, seed: int = 100) -> np.ndarray:
    """Gaussian noise of the same shape, with each column's mean and standard deviation: no label in it."""
    z = np.random.default_rng(seed).normal(size=x.shape)
    return (z - z.mean(0)) / z.std(0) * x.std(0) + x.mean(0)


def rank_deficient(n: int = 120, d: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """n > d, but two columns repeat others: XᵀX has two zero eigenvalues."""
    x, y = labelled_features(n, d)
    x[:, -2:] = x[:, :2]
    return x, y


@pytest.mark.parametrize(
    "features",
    [
        labelled_features(200, 20),
        labelled_features(40, 60),
        labelled_features(50, 50),
        rank_deficient(),
        (noise_like(labelled_features(40, 60)[0]), labelled_features(40, 60)[1]),
    ],
    ids=["n>d", "n<d", "n=d", "n>d-rank-deficient", "n<d-noise"],
)
def test_logme_agrees_with_algorithm1(features):
    x, y = features
    value = logme(torch.tensor(x), torch.tensor(y))
    assert math.isfinite(value)
    assert value == pytest.approx(logme_algorithm1(x, y), abs=1e-6)


def noise_free_evidence(f: np.ndarray, y: np.ndarray) -> float:
    """LogME's value when, for every class, the maximum lies at β → ∞ (n ≤ d, features that interpolate):
    y ~ N(0, α⁻¹XXᵀ), maximised in closed form at α = n / yᵀ(XXᵀ)⁻¹y, per example, averaged over classes."""
    n = len(f)
    gram = f @ f.T
    log_det = np.linalg.slogdet(gram)[1]
    values = []
    for c in np.unique(y):
        target = (y == c).astype(np.float64)
        q = target @ np.linalg.solve(gram, target)
        values.append((-n / 2 * np.log(2 * np.pi) - log_det / 2 + n / 2 * np.log(n / q) - n / 2) / n)
    return float(np.mean(values))


def test_logme_reaches_the_noise_free_bound_when_features_interpolate():
    """n < d with little noise: β runs to infinity, where Algorithm 1 written directly loses its digits. LogME is
    the supremum of the evidence, so never below the bound's closed form, and on it when every class goes there."""
    at_bound = labelled_features(40, 80, seed=4, noise=0.3)
    assert logme(torch.tensor(at_bound[0]), torch.tensor(at_bound[1])) == pytest.approx(
        noise_free_evidence(*at_bound), abs=1e-6
    )
    for seed in range(4):
        x, y = labelled_features(40, 80, seed=seed, noise=0.3)
        assert logme(torch.tensor(x), torch.tensor(y)) >= noise_free_evidence(x, y) - 1e-9


@pytest.mark.parametrize(("n", "d"), [(300, 32), (40, 80)], ids=["n>d", "n<d"])
def test_logme_ranks_label_features_above_noise(n, d):
    x, y = labelled_features(n, d, noise=0.3)
    assert logme(torch.tensor(x), torch.tensor(y)) > logme(torch.tensor(noise_like(x)), torch.tensor(y)) + 0.1


def test_logme_stays_finite_when_the_labels_lie_in_the_span():
    """One-hot features with n > d: the evidence grows without bound as β → ∞; the score stays a number, on top."""
    x, y = labelled_features(200, 8, noise=0.0)
    exact = x.round()  # the one-hot columns without their noise; the other columns are zero
    noisy = logme(torch.tensor(x), torch.tensor(y))
    value = logme(torch.tensor(exact), torch.tensor(y))
    assert math.isfinite(value) and value > noisy


def test_logme_ignores_the_order_of_examples():
    x, y = labelled_features(150, 30)
    order = np.random.default_rng(5).permutation(150)
    assert logme(torch.tensor(x[order]), torch.tensor(y[order])) == pytest.approx(
        logme(torch.tensor(x), torch.tensor(y)), abs=1e-10
    )


def test_logme_ignores_the_label_ids():
    x, y = labelled_features(150, 30)
    renamed = np.array([11, 4, 9, 0, 2])[y]
    assert logme(torch.tensor(x), torch.tensor(renamed)) == pytest.approx(
        logme(torch.tensor(x), torch.tensor(y)), abs=1e-12
    )


def test_logme_takes_float32_features():
    x, y = labelled_features(100, 10)
    x32 = torch.tensor(x, dtype=torch.float32)
    assert logme(x32, torch.tensor(y)) == pytest.approx(logme_algorithm1(x32.double().numpy(), y), abs=1e-6)


# --- all three --------------------------------------------------------------------------------------------------


def test_score_all_gives_the_three_scores_logme_on_training_features():
    train_x, train_y, val_x, val_y = classification(n_train=150, n_val=60)
    scores = score_all(train_x, train_y, val_x, val_y)
    assert scores == {
        "probe_accuracy": linear_probe_accuracy(train_x, train_y, val_x, val_y),
        "knn_accuracy": knn_accuracy(train_x, train_y, val_x, val_y),
        "logme": logme(train_x, train_y),
    }
