"""The training loss, computed by hf_tl for every family.

With a `compute_loss_func` the Trainer passes `num_items_in_batch`, the number of labels in
the whole accumulated (and, across ranks, gathered) batch, and leaves the normalisation to
the loss. Summing and dividing by it gives the same gradient whatever the accumulation steps
or process count; a model's own loss would not all use it.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def classification_loss(outputs, labels: Tensor, num_items_in_batch: int | Tensor | None = None) -> Tensor:
    """Cross-entropy; DeiT with teacher trains both heads on the sum of theirs (and predicts with the mean)."""
    heads = (
        [outputs.cls_logits, outputs.distillation_logits]
        if hasattr(outputs, "distillation_logits")
        else [outputs.logits]
    )
    total = sum(F.cross_entropy(logits.float(), labels, reduction="sum") for logits in heads)
    count = num_items_in_batch if num_items_in_batch is not None else labels.numel()
    return total / count
