"""Mean attention distance per head and layer (Dosovitskiy et al. 2021, Fig. 7; Raghu et al. 2021, Fig. 3).

For each head and each query patch: the pixel distance between patch centres, weighted by the
attention the query pays to each patch, summed over key patches; then averaged over queries and
images. Class, distillation and register tokens have no position, so, as Raghu et al. do, they are
dropped as queries and as keys, and each query's attention over the patches is renormalised to
sum to 1 (uniform attention then gives the mean pairwise distance of the patch grid).

Attention weights come from hooks, reduced to a (batch, heads) distance as soon as they appear:
transformers' ViT and DeiT (run with eager attention, which returns its weights), and timm's
ViT-likes whose blocks use timm's `Attention` (its unfused path, whose dropout sees the weights).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor, nn

from hf_tl.analysis.layers import block_names
from hf_tl.analysis.tokens import patch_size
from hf_tl.errors import HfTlError
from hf_tl.models.families import layout

TRANSFORMERS_GLOBAL_ATTENTION = ("vit", "deit")  # families whose every block attends over the whole patch grid
SUPPORTED = "transformers ViT and DeiT, and timm ViT-likes built on timm's Attention (vit_*, deit_*, ...)"


def patch_distances(grid: tuple[int, int], patch: tuple[int, int]) -> Tensor:
    """(P, P) pixel distances between the centres of a grid of patches, row-major as ViTs order them."""
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    centres = torch.stack([(rows + 0.5) * patch[0], (cols + 0.5) * patch[1]], dim=-1).reshape(-1, 2)
    return torch.cdist(centres.double(), centres.double())


def mean_distance(attention: Tensor, distances: Tensor) -> Tensor:
    """(B, heads) from (B, heads, N, N) attention whose last P tokens are the patches: distance per image and head."""
    patches = len(distances)
    weights = attention[..., -patches:, -patches:].double()
    weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    return (weights * distances.to(weights.device)).sum(dim=-1).mean(dim=-1)


class AttentionDistance:
    """Hooks on every attention of a ViT-like model that add each image's mean distance per head into running sums."""

    def __init__(self, model: nn.Module, image_size: tuple[int, int]) -> None:
        self.model = model
        lay = layout(model)
        self.modules = _attention_modules(model, lay.family)
        self.names = block_names(lay)
        patch = patch_size(model)
        self.patch = patch
        self.grid = (image_size[0] // patch[0], image_size[1] // patch[1])
        self.distances = patch_distances(self.grid, patch)
        self.sums: list[Tensor | None] = [None] * len(self.modules)
        self.images = 0
        self.prefix_tokens: int | None = None

    @contextmanager
    def hooked(self) -> Iterator[AttentionDistance]:
        handles = [module.register_forward_hook(self._hook(i)) for i, module in enumerate(self.modules)]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def add(self, pixel_values: Tensor) -> None:
        """One forward pass; every layer's per-head distances, summed over its images."""
        self.model(pixel_values=pixel_values)
        self.images += len(pixel_values)

    def result(self) -> np.ndarray:
        """(layers, heads) mean distance in pixels of the model's input."""
        if self.images == 0:
            raise ValueError("no image was added.")
        return torch.stack(self.sums).cpu().numpy() / self.images

    def _hook(self, index: int):
        def hook(_module, _args, output):
            attention = output[1] if isinstance(output, tuple) else output  # transformers: (hidden, weights)
            self._check(attention, index)
            per_image = mean_distance(attention.detach(), self.distances).sum(dim=0)
            self.sums[index] = per_image if self.sums[index] is None else self.sums[index] + per_image

        return hook

    def _check(self, attention: Tensor | None, index: int) -> None:
        patches = len(self.distances)
        if attention is None or attention.ndim != 4 or attention.shape[-1] != attention.shape[-2]:
            shape = None if attention is None else tuple(attention.shape)
            raise HfTlError(f"the attention of {self.names[index]} is {shape}, not (batch, heads, tokens, tokens).")
        tokens = attention.shape[-1]
        if tokens < patches:
            raise HfTlError(
                f"the attention of {self.names[index]} covers {tokens} tokens, fewer than the {self.grid[0]}x"
                f"{self.grid[1]} patch grid: it does not attend over the whole image (windowed attention)."
            )
        self.prefix_tokens = tokens - patches


def _attention_modules(model: nn.Module, family: str) -> list[nn.Module]:
    """The module in each block whose output holds the attention weights; refuses models without global attention."""
    lay = layout(model)
    modules = dict(model.named_modules())
    if family in TRANSFORMERS_GLOBAL_ATTENTION:
        model.set_attn_implementation("eager")  # sdpa does not return the weights
        return [modules[f"{group[0]}.attention"] for group in lay.blocks]
    attention = [_timm_attention(group, modules) for group in lay.blocks] if family.startswith("timm:") else []
    if patch_size(model) is None or not attention or not all(hasattr(a, "fused_attn") for a in attention):
        raise HfTlError(
            f"attention-distance needs a ViT-like model whose every block attends over the whole patch grid "
            f"({SUPPORTED}); this is a {family} model, {_why_not(model, family)}."
        )
    for module in attention:
        module.fused_attn = False  # timm's explicit path, where attn_drop receives the softmax weights
    return [module.attn_drop for module in attention]


def _timm_attention(group: tuple[str, ...], modules: dict[str, nn.Module]) -> nn.Module | None:
    """timm names a block's attention `attn` (a fine-grained group may also hold the final norm)."""
    return next((modules[f"{name}.attn"] for name in group if f"{name}.attn" in modules), None)


def _why_not(model: nn.Module, family: str) -> str:
    if patch_size(model) is None:
        return "which has no attention"
    if "swin" in family:
        return "which attends within shifted windows, not over the whole image"
    if "cait" in family:
        return "whose talking-heads attention mixes heads after the softmax (no distribution per head)"
    return "whose attention hf_tl cannot read"
