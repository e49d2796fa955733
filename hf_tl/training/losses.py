"""The training loss, computed by hf_tl for every family.

With a `compute_loss_func` the Trainer passes `num_items_in_batch`, the number of labels in
the whole accumulated (and, across ranks, gathered) batch, and leaves the normalisation to
the loss. Summing and dividing by it gives the same gradient whatever the accumulation steps
or process count; a model's own loss would not all use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor


def classification_loss(
    outputs, labels: Tensor, num_items_in_batch: int | Tensor | None = None, label_smoothing: float = 0.0
) -> Tensor:
    """Cross-entropy; DeiT with teacher trains both heads on the sum of theirs (and predicts with the mean).

    `labels` are class indices (B,), smoothed by `label_smoothing`, or soft targets (B, classes), mixup's
    (already smoothed by it): -sum(t * log_softmax(logits)) per row. Either way summed over the batch and
    divided by `num_items_in_batch`, the number of images.
    """
    heads = (
        [outputs.cls_logits, outputs.distillation_logits]
        if hasattr(outputs, "distillation_logits")
        else [outputs.logits]
    )
    total = sum(_summed_cross_entropy(logits.float(), labels, label_smoothing) for logits in heads)
    count = num_items_in_batch if num_items_in_batch is not None else len(labels)
    return total / count


def _summed_cross_entropy(logits: Tensor, labels: Tensor, label_smoothing: float) -> Tensor:
    if labels.is_floating_point():  # soft targets
        return -(labels * F.log_softmax(logits, dim=-1)).sum()
    return F.cross_entropy(logits, labels, reduction="sum", label_smoothing=label_smoothing)


@dataclass(frozen=True)
class ClassificationLoss:
    """The run's loss: `training.label_smoothing` while training; evaluation's loss stays plain cross-entropy.

    The Trainer calls its `compute_loss_func` the same way in training and evaluation, so `HfTlTrainer`
    passes `training` (whether the model is in training mode) itself.
    """

    label_smoothing: float = 0.0

    def __call__(
        self, outputs, labels: Tensor, num_items_in_batch: int | Tensor | None = None, *, training: bool
    ) -> Tensor:
        smoothing = self.label_smoothing if training else 0.0
        return classification_loss(outputs, labels, num_items_in_batch, smoothing)
