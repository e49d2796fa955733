"""Losses that the model's own forward does not compute."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn
from transformers import DeiTForImageClassificationWithTeacher


def distilled_deit_loss(outputs, labels: Tensor, num_items_in_batch: int | None = None) -> Tensor:
    """DeiT trains both heads: the sum of their cross-entropies (it predicts with their mean)."""
    return F.cross_entropy(outputs.cls_logits, labels) + F.cross_entropy(outputs.distillation_logits, labels)


def loss_for(model: nn.Module) -> Callable | None:
    """A Trainer `compute_loss_func`, or None where the model computes its own loss from `labels`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps adapters
    if isinstance(base, DeiTForImageClassificationWithTeacher):
        return distilled_deit_loss
    return None
