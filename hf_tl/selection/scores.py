"""Three quick scores of how well a frozen backbone's features suit a labelled dataset, for ranking backbones.

- `linear_probe_accuracy`: validation accuracy of a multinomial logistic regression on the features, the linear
  evaluation of Kornblith et al. 2019 ("Do Better ImageNet Models Transfer Better?", CVPR), fitted full-batch
  with L-BFGS as they did.
- `knn_accuracy`: validation accuracy of the weighted cosine k-NN classifier of Wu et al. 2018 as DINO reports
  it (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers", ICCV: k=20, T=0.07).
- `logme`: LogME (You et al. 2021, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning",
  ICML), the maximised evidence of a Bayesian linear model from features to one-hot labels; needs no
  validation split.

Features are (n, d) tensors and labels (n,) integer tensors; each score runs on the device the features are on
(on the CPU for MPS, which has no float64), in float64. The two accuracies come with the predictions they count
(`linear_probe_predictions`, `knn_predictions`); `score_all` gives all three scores with their defaults.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

KNN_CHUNK = 2**25  # float64 similarities held at once by `knn_predictions`: 256 MiB
LOGME_RANK_RTOL = 1e-12  # eigenvalues of XᵀX below this fraction of the largest count as zero (singular values: 1e-6)
PROBE_TOLERANCE_GRAD = 1e-7  # L-BFGS stops when no gradient entry of the mean loss is larger
PROBE_TOLERANCE_CHANGE = 1e-12


def _float64(x: Tensor, device: torch.device | None = None) -> Tensor:
    """`x` as float64 on `device` (default: its own), on the CPU instead of MPS, which has no float64."""
    device = torch.device(device) if device is not None else x.device
    if device.type == "mps":
        device = torch.device("cpu")
    return x.to(device=device, dtype=torch.float64)


def _accuracy(predicted: Tensor, labels: Tensor) -> float:
    return (predicted == labels.to(predicted.device)).double().mean().item() if len(labels) else float("nan")


# --- linear probe ---------------------------------------------------------------------------------------------


def _standardise(train: Tensor, val: Tensor) -> tuple[Tensor, Tensor]:
    """Both sets scaled with the training mean and standard deviation; a constant feature is only centred."""
    mean, std = train.mean(0), train.std(0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (train - mean) / std, (val - mean) / std


def linear_probe_predictions(
    train_x: Tensor,
    train_y: Tensor,
    val_x: Tensor,
    *,
    l2: float | None = None,
    max_iter: int = 1000,
    seed: int = 0,
) -> Tensor:
    """Validation labels predicted by an L2-regularised multinomial logistic regression on standardised features.

    The linear evaluation of Kornblith et al. 2019, who fit it with L-BFGS on the whole training set: here
    `torch.optim.LBFGS` with a strong-Wolfe line search, full-batch, in float64, on the features' device.
    It minimises mean cross-entropy + l2/2 · ‖W‖² (the intercept is not penalised); `l2=None` takes 1/n_train,
    which is scikit-learn's `LogisticRegression(C=1)` (C · Σ loss + ½‖W‖², divided by n). `max_iter` bounds the
    L-BFGS iterations. Features are standardised with the training mean and standard deviation. The classes are
    the labels seen in training. The problem is convex, so the result hardly depends on the start; `seed` draws
    that start (small Gaussian weights) so that a run repeats exactly.
    """
    train = _float64(train_x)
    train, val = _standardise(train, _float64(val_x, train.device))
    classes, targets = torch.unique(train_y.to(train.device), return_inverse=True)
    n, d = train.shape
    penalty = 1.0 / n if l2 is None else l2
    generator = torch.Generator().manual_seed(seed)
    weight = (torch.randn(d, len(classes), generator=generator, dtype=torch.float64) * 1e-3).to(train.device)
    weight.requires_grad_(True)
    bias = torch.zeros(len(classes), dtype=torch.float64, device=train.device, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        max_iter=max_iter,
        tolerance_grad=PROBE_TOLERANCE_GRAD,
        tolerance_change=PROBE_TOLERANCE_CHANGE,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(train @ weight + bias, targets) + penalty / 2 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return classes[(val @ weight + bias).argmax(1)]


def linear_probe_accuracy(
    train_x: Tensor,
    train_y: Tensor,
    val_x: Tensor,
    val_y: Tensor,
    *,
    l2: float | None = None,
    max_iter: int = 1000,
    seed: int = 0,
) -> float:
    """Validation accuracy of `linear_probe_predictions` (Kornblith et al. 2019's linear evaluation): how well the
    classes separate linearly in the features. A validation label never seen in training counts as an error."""
    predicted = linear_probe_predictions(train_x, train_y, val_x, l2=l2, max_iter=max_iter, seed=seed)
    return _accuracy(predicted, val_y)


# --- k-NN -------------------------------------------------------------------------------------------------------


def knn_predictions(
    train_x: Tensor,
    train_y: Tensor,
    val_x: Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    chunk_rows: int | None = None,
) -> Tensor:
    """Validation labels predicted by the weighted cosine k-NN classifier as DINO reports it (Caron et al. 2021,
    "Emerging Properties in Self-Supervised Vision Transformers", after Wu et al. 2018): features L2-normalised,
    the k training points of highest cosine similarity vote for their labels with weight exp(similarity /
    temperature), and the class with the most weight wins (a tie goes to the lowest class id).

    `k` larger than the training set is clamped to it. Validation rows go `chunk_rows` at a time (default: as many
    as keep KNN_CHUNK similarities), so 50,000 × 10,000 is never held at once.
    """
    train = F.normalize(_float64(train_x), dim=1)
    val = F.normalize(_float64(val_x, train.device), dim=1)
    labels = train_y.to(train.device).long()
    num_classes = int(labels.max()) + 1
    k = min(k, len(train))
    rows = chunk_rows or max(1, KNN_CHUNK // max(len(train), 1))
    predicted = [labels[:0]]
    for start in range(0, len(val), rows):
        similarity, nearest = (val[start : start + rows] @ train.T).topk(k, dim=1)
        votes = torch.zeros(len(similarity), num_classes, dtype=torch.float64, device=train.device)
        votes.scatter_add_(1, labels[nearest], (similarity / temperature).exp())
        predicted.append(votes.argmax(1))  # the first of equal maxima: the lowest class id
    return torch.cat(predicted)


def knn_accuracy(
    train_x: Tensor,
    train_y: Tensor,
    val_x: Tensor,
    val_y: Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    chunk_rows: int | None = None,
) -> float:
    """Validation accuracy of `knn_predictions` (DINO's k-NN evaluation, Caron et al. 2021): it trains nothing,
    so it measures the features' neighbourhoods as they are."""
    predicted = knn_predictions(train_x, train_y, val_x, k=k, temperature=temperature, chunk_rows=chunk_rows)
    return _accuracy(predicted, val_y)


# --- LogME ------------------------------------------------------------------------------------------------------


def _spectrum(features: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The nonzero eigenvalues σ of XᵀX, the squared projections (uᵢᵀy)² of each target column on the matching
    left singular vectors, and what of ‖y‖² lies outside them.

    As the reference code does: with more examples than dimensions, the eigendecomposition of the d × d
    matrix XᵀX (uᵢᵀy = vᵢᵀXᵀy / sᵢ), eigenvalues below LOGME_RANK_RTOL of the largest dropped as zero;
    otherwise the thin SVD of X itself.
    """
    n, d = features.shape
    if n > d:
        sigma, v = torch.linalg.eigh(features.T @ features)
        keep = sigma > sigma.max().clamp_min(0) * LOGME_RANK_RTOL
        sigma, v = sigma[keep], v[:, keep]
        x2 = (v.T @ (features.T @ targets)).square() / sigma[:, None]
    else:
        u, s, _ = torch.linalg.svd(features, full_matrices=False)
        sigma, x2 = s.square(), (u.T @ targets).square()
    outside = (targets.square().sum(0) - x2.sum(0)).clamp_min(0)
    return sigma, x2, outside


def _fit_terms(sigma: Tensor, x2: Tensor, outside: Tensor, ratio: Tensor, n: int) -> tuple[Tensor, ...]:
    """For t = α/β per target: γ = Σ σᵢ/(t+σᵢ), n − γ, ‖m‖² and ‖Xm − y‖² of the posterior mean m = β A⁻¹ Xᵀy.

    n − γ is summed from its own terms, (n − len(σ)) + Σ t/(t+σᵢ), not subtracted: when t → 0 (the features
    interpolate the labels) γ → n and the subtraction would lose every digit."""
    shrink = sigma[:, None] + ratio[None, :]
    gamma = (sigma[:, None] / shrink).sum(0)
    free = (n - len(sigma)) + (ratio[None, :] / shrink).sum(0)
    m2 = (sigma[:, None] * x2 / shrink.square()).sum(0)
    residual = (x2 * (ratio[None, :] / shrink).square()).sum(0) + outside
    return gamma, free, m2, residual


def _log_evidence(n: int, sigma: Tensor, alpha: Tensor, beta: Tensor, m2: Tensor, residual: Tensor) -> Tensor:
    """log p(y | X, α, β) / n per target (You et al. 2021, Eq. 2). d/2·log α − ½·log|αI + βXᵀX| is written as
    −½·Σ log(1 + σᵢ/t) over the nonzero σᵢ, t = α/β: each zero eigenvalue adds log α to log|A| and cancels one
    of the d log α, which keeps the value finite when α or β runs to a bound."""
    fit = -0.5 * torch.log1p(sigma[:, None] / (alpha / beta)[None, :]).sum(0)
    return (fit + n / 2 * beta.log() - beta / 2 * residual - alpha / 2 * m2 - n / 2 * math.log(2 * math.pi)) / n


def logme(features: Tensor, labels: Tensor, *, max_iter: int = 10_000, tol: float = 1e-12) -> float:
    """LogME (You et al. 2021, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning", ICML,
    Algorithm 1): how well a Bayesian linear model explains the labels from the features, with no head trained
    and no validation split; higher is better.

    For each class present in `labels`, its one-hot column y gets the model y = Xw + noise with prior
    w ~ N(0, α⁻¹I) and noise N(0, β⁻¹). The paper's fixed-point iteration, from α = β = 1, sets α and β to
    maximise the evidence p(y | X, α, β); it stops when no class's log evidence per example changes by more than
    `tol`. The log evidence divided by n is averaged over classes. Everything comes from the spectrum of X, which
    all classes share, computed as the authors' reference code does (github.com/thuml/LogME, LogME.py,
    `_fit_fixed_point`): the thin SVD of X when n ≤ d, the eigendecomposition of XᵀX when n > d.

    Unlike that code, it iterates to convergence rather than at most 11 times, its divisions carry no 1e-5 guard,
    and zero singular values count in log|A| (the reference leaves out (d − rank)/2·log α, so its n < d scores
    differ): the value is the evidence of Algorithm 1 for any rank. When the maximum lies at a bound, α/β → ∞
    (the features explain nothing) or α/β → 0 (n ≤ d: they interpolate the labels), the evidence still
    converges, to its supremum. Only labels lying exactly in the span of fewer than n feature directions have an
    unbounded evidence; there the iteration stops where float64 gives out, at a large value. No bias and no
    standardisation, as in the paper.
    """
    x = _float64(features)
    n = len(x)
    targets = (labels.to(x.device)[:, None] == torch.unique(labels.to(x.device))[None, :]).double()
    sigma, x2, outside = _spectrum(x, targets)
    tiny = torch.finfo(torch.float64).tiny
    alpha = torch.ones(targets.shape[1], dtype=torch.float64, device=x.device)
    beta = torch.ones_like(alpha)
    previous = None
    for _ in range(max_iter):
        gamma, free, m2, residual = _fit_terms(sigma, x2, outside, alpha / beta, n)
        evidence = _log_evidence(n, sigma, alpha, beta, m2, residual)
        if previous is not None:
            evidence = torch.where(evidence.isfinite(), evidence, previous)  # a class past float64's range stays
            if ((evidence - previous).abs() <= tol).all():
                break
        previous = evidence
        alpha, beta = gamma / m2.clamp_min(tiny), free / residual.clamp_min(tiny)
    return evidence.mean().item()


def score_all(train_x: Tensor, train_y: Tensor, val_x: Tensor, val_y: Tensor, *, seed: int = 0) -> dict[str, float]:
    """The three scores of one backbone's features, with their defaults: {"probe_accuracy", "knn_accuracy",
    "logme"}. LogME sees the training features only, as it needs no held-out split (You et al. 2021)."""
    return {
        "probe_accuracy": linear_probe_accuracy(train_x, train_y, val_x, val_y, seed=seed),
        "knn_accuracy": knn_accuracy(train_x, train_y, val_x, val_y),
        "logme": logme(train_x, train_y),
    }
