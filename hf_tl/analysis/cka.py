"""Linear CKA (Kornblith et al. 2019) with the minibatch estimator of Nguyen et al. 2021, as Raghu et al. 2021 used it.

Each minibatch gives Song et al. 2012's unbiased HSIC estimate for every pair of layers;
HSIC(K,L), HSIC(K,K) and HSIC(L,L) are summed over minibatches and CKA is taken from the sums.
Only the sums are kept, so memory depends on the batch size and the layer count, never on how
many examples are seen. Gram matrices are built and accumulated in float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from hf_tl.config.commands import MIN_BATCH

GRAM_CHUNK = 2**24  # float64 elements of one feature slice turned into a partial Gram matrix


def gram(features: Tensor) -> Tensor:
    """X Xᵀ in float64 for (n, ...) features, the feature axis sliced so that no float64 copy of X is whole.

    X is first translated by its first row. HSIC of a linear kernel, biased or unbiased, does not change when
    every feature row moves by the same vector, and without the offset large activation means do not cancel
    in float64; identical rows become exactly zero, so a layer that does not vary is recognised exactly.
    """
    x = features.reshape(len(features), -1)
    if x.device.type == "mps":  # no float64 there
        x = x.cpu()
    n, d = x.shape
    step = max(1, GRAM_CHUNK // max(n, 1))
    out = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    for start in range(0, d, step):
        part = x[:, start : start + step].double()
        part -= part[:1].clone()
        out.addmm_(part, part.T)
    return out


class MinibatchCKA:
    """Running sums of HSIC(K_i, L_j), HSIC(K_i, K_i) and HSIC(L_j, L_j) for every layer i of A and j of B."""

    def __init__(self, unbiased: bool = True) -> None:
        self.unbiased = unbiased
        self.cross: np.ndarray | None = None
        self.self_a: np.ndarray | None = None
        self.self_b: np.ndarray | None = None
        self.varies_a: np.ndarray | None = None  # per layer: did its features differ between examples at all?
        self.varies_b: np.ndarray | None = None
        self.batches = 0
        self.examples = 0

    def update(self, grams_a: Sequence[Tensor], grams_b: Sequence[Tensor] | None = None) -> None:
        """Add one minibatch: a Gram matrix per layer of A and of B (`None`: B is A, as in a self-similarity)."""
        stack_a = torch.stack(list(grams_a))
        stack_b = stack_a if grams_b is None else torch.stack(list(grams_b))
        terms_a = _hsic_terms(stack_a, self.unbiased)
        terms_b = terms_a if grams_b is None else _hsic_terms(stack_b, self.unbiased)
        if terms_a.n != terms_b.n:
            raise ValueError("the Gram matrices of A and B must come from the same examples (the same n).")
        cross = _pairwise_hsic(terms_a, terms_b).cpu().numpy()
        self_a = _self_hsic(terms_a).cpu().numpy()
        self_b = self_a if grams_b is None else _self_hsic(terms_b).cpu().numpy()
        varies_a, varies_b = _varies(stack_a), _varies(stack_b)
        if self.cross is None:  # copies: B may be A, and each side keeps its own sums
            self.cross, self.self_a, self.self_b = cross, self_a.copy(), self_b.copy()
            self.varies_a, self.varies_b = varies_a, varies_b
        else:
            self.cross += cross
            self.self_a += self_a
            self.self_b += self_b
            self.varies_a |= varies_a
            self.varies_b |= varies_b
        self.batches += 1
        self.examples += len(grams_a[0])

    def result(self) -> np.ndarray:
        """CKA for every (layer of A, layer of B); NaN for a layer whose features do not vary across the examples.

        Such a layer (a learned class token before any block, the same for every image) has a self-HSIC of 0,
        which would otherwise come out as rounding noise divided by rounding noise.
        """
        if self.cross is None:
            raise ValueError("no minibatch was added.")
        self_a = np.where(self.varies_a & (self.self_a > 0), self.self_a, np.nan)
        self_b = np.where(self.varies_b & (self.self_b > 0), self.self_b, np.nan)
        return self.cross / np.sqrt(np.outer(self_a, self_b))


def cka(X: np.ndarray | Tensor, Y: np.ndarray | Tensor, unbiased: bool = True) -> float:
    """Linear CKA of two feature matrices of shape (n, d1) and (n, d2): the minibatch estimator on one batch.

    `unbiased=False` gives the biased (centering-matrix) estimator of Kornblith et al. 2019.
    """
    x, y = torch.as_tensor(X), torch.as_tensor(Y)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ValueError(f"cka needs two matrices (n, d1) and (n, d2) with the same n; got {x.shape} and {y.shape}.")
    accumulator = MinibatchCKA(unbiased)
    accumulator.update([gram(x)], [gram(y)])
    return float(accumulator.result()[0, 0])


class _Terms(NamedTuple):
    """What HSIC needs from m Gram matrices of n examples: each matrix flattened, its sum and its row sums."""

    flat: Tensor  # (m, n*n)
    sums: Tensor  # (m,)
    rows: Tensor  # (m, n)
    n: int
    unbiased: bool


def _hsic_terms(grams: Tensor, unbiased: bool) -> _Terms:
    """Unbiased: the matrices with a zeroed diagonal (Song et al. 2012). Biased: centred, HKH."""
    m, n, _ = grams.shape
    if unbiased:
        if n < MIN_BATCH:
            raise ValueError(f"the unbiased HSIC estimator needs at least {MIN_BATCH} examples per minibatch; got {n}.")
        tilde = grams.clone()
        tilde.diagonal(dim1=1, dim2=2).zero_()
        rows = tilde.sum(dim=2)
        return _Terms(tilde.reshape(m, n * n), rows.sum(dim=1), rows, n, True)
    if n < 2:
        raise ValueError(f"HSIC needs at least 2 examples per minibatch; got {n}.")
    centred = grams - grams.mean(dim=1, keepdim=True)
    centred = centred - centred.mean(dim=2, keepdim=True)
    return _Terms(centred.reshape(m, n * n), centred.sum(dim=(1, 2)), centred.sum(dim=2), n, False)


def _pairwise_hsic(a: _Terms, b: _Terms) -> Tensor:
    """HSIC(K_i, L_j) for every i of A and j of B."""
    return _combine(a.flat @ b.flat.T, torch.outer(a.sums, b.sums), a.rows @ b.rows.T, a)


def _self_hsic(a: _Terms) -> Tensor:
    """HSIC(K_i, K_i) for every i: the diagonal of `_pairwise_hsic(a, a)` without the off-diagonal work."""
    return _combine((a.flat * a.flat).sum(dim=1), a.sums * a.sums, (a.rows * a.rows).sum(dim=1), a)


def _varies(grams: Tensor) -> np.ndarray:
    """Per Gram matrix: whether the layer's features differ between these examples (see `gram`: identical rows
    give a matrix of exact zeros)."""
    return (grams != grams[:, :1, :1]).flatten(1).any(dim=1).cpu().numpy()


def _combine(trace: Tensor, sums: Tensor, rows: Tensor, terms: _Terms) -> Tensor:
    """Unbiased: [tr(K̃L̃) + 1ᵀK̃1·1ᵀL̃1/((n-1)(n-2)) − 2/(n-2)·1ᵀK̃L̃1] / (n(n-3)). Biased: tr(HKHL)/(n-1)²."""
    n = terms.n
    if not terms.unbiased:
        return trace / (n - 1) ** 2
    return (trace + sums / ((n - 1) * (n - 2)) - 2 * rows / (n - 2)) / (n * (n - 3))
