"""The training loss: label smoothing and mixup's soft targets as defined, for one head and DeiT's two."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from hf_tl.training.losses import ClassificationLoss, classification_loss
from hf_tl.training.trainer import HfTlTrainer

LOGITS = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
LABELS = torch.tensor([0, 2])


def log_softmax(row: list[float]) -> list[float]:
    norm = math.log(sum(math.exp(x) for x in row))
    return [x - norm for x in row]


def smoothed_by_hand(logits: torch.Tensor, labels: torch.Tensor, eps: float) -> float:
    """Per image (1 - eps) * -log p_y + eps * mean_k(-log p_k), summed: the definition label smoothing has."""
    total = 0.0
    for row, label in zip(logits.tolist(), labels.tolist(), strict=True):
        logp = log_softmax(row)
        total += (1 - eps) * -logp[label] + eps * -sum(logp) / len(logp)
    return total


def one_head(logits: torch.Tensor) -> SimpleNamespace:
    return SimpleNamespace(logits=logits)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_label_smoothing_changes_the_loss_as_defined(eps):
    loss = classification_loss(one_head(LOGITS), LABELS, label_smoothing=eps)
    assert loss.item() == pytest.approx(smoothed_by_hand(LOGITS, LABELS, eps) / 2, rel=1e-6)


def test_soft_targets_give_minus_sum_t_log_p():
    targets = torch.tensor([[0.7, 0.3, 0.0], [0.1, 0.2, 0.7]])
    by_hand = -sum(
        t * lp for row, trow in zip(LOGITS.tolist(), targets.tolist(), strict=True)
        for t, lp in zip(trow, log_softmax(row), strict=True)
    )  # fmt: skip
    assert classification_loss(one_head(LOGITS), targets).item() == pytest.approx(by_hand / 2, rel=1e-6)
    # soft targets carry their own smoothing (timm's Mixup smooths them): none is added
    assert classification_loss(one_head(LOGITS), targets, label_smoothing=0.3).item() == pytest.approx(by_hand / 2)
    # a one-hot target is the hard label's cross-entropy
    one_hot = torch.nn.functional.one_hot(LABELS, 3).float()
    assert classification_loss(one_head(LOGITS), one_hot).item() == pytest.approx(
        classification_loss(one_head(LOGITS), LABELS).item()
    )


def test_both_deit_heads_and_the_batch_normalisation():
    other = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 2.0]])
    deit = SimpleNamespace(cls_logits=LOGITS, distillation_logits=other)
    expected = smoothed_by_hand(LOGITS, LABELS, 0.2) + smoothed_by_hand(other, LABELS, 0.2)
    assert classification_loss(deit, LABELS, label_smoothing=0.2).item() == pytest.approx(expected / 2, rel=1e-6)
    # divided by num_items_in_batch (the accumulated batch's images), not this batch's
    assert classification_loss(deit, LABELS, 8, 0.2).item() == pytest.approx(expected / 8, rel=1e-6)


def test_evaluation_loss_is_plain_cross_entropy():
    loss = ClassificationLoss(label_smoothing=0.4)
    plain = classification_loss(one_head(LOGITS), LABELS).item()
    assert loss(one_head(LOGITS), LABELS, training=False).item() == pytest.approx(plain)
    assert loss(one_head(LOGITS), LABELS, training=True).item() == pytest.approx(
        smoothed_by_hand(LOGITS, LABELS, 0.4) / 2
    )


def test_the_trainer_tells_the_loss_whether_the_model_trains():
    """HfTlTrainer's compute_loss_func, as the Trainer calls it (outputs, labels, num_items_in_batch=...)."""
    model = nn.Linear(1, 1)
    trainer = SimpleNamespace(loss=ClassificationLoss(label_smoothing=0.4), model=model)
    call = HfTlTrainer._loss_in_mode
    model.train()
    assert call(trainer, one_head(LOGITS), LABELS, num_items_in_batch=2).item() == pytest.approx(
        smoothed_by_hand(LOGITS, LABELS, 0.4) / 2
    )
    model.eval()
    assert call(trainer, one_head(LOGITS), LABELS, num_items_in_batch=2).item() == pytest.approx(
        classification_loss(one_head(LOGITS), LABELS).item()
    )
