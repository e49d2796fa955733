"""Run one or two backbones over the same images and accumulate the minibatch CKA of every pair of their layers."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from hf_tl.analysis.cka import MIN_BATCH, MinibatchCKA
from hf_tl.analysis.layers import GramTaps, Tap
from hf_tl.data.preprocess import to_device


@dataclass
class Backbone:
    """A model ready to compare: how the user named it, and how its pixels are made from uint8 images."""

    label: str  # e.g. "model_a=google/vit-base-patch16-224", for error messages
    model: nn.Module
    preprocess: Callable[[Tensor | list[Tensor]], Tensor]
    image_size: tuple[int, int]


@dataclass
class LayerCKA:
    matrix: np.ndarray  # layers of A x layers of B
    taps_a: list[Tap]
    taps_b: list[Tap]
    examples: int
    minibatches: int


def layer_cka(
    backbones: list[Backbone],
    batches: Iterable[Tensor | list[Tensor]],
    layers: str,
    tokens: str,
    device: torch.device,
    on_batch: Callable[[int], object] = lambda n: None,
) -> LayerCKA:
    """CKA of every layer of the first backbone with every layer of the last (one backbone: with itself).

    Both see each minibatch of uint8 images, each through its own preprocessing; a last minibatch of fewer
    than 4 images (too few for the unbiased estimator) is left out. `on_batch(n)` reports progress.
    """
    taps = [GramTaps(b.model, layers, tokens) for b in backbones]
    accumulator = MinibatchCKA(unbiased=True)
    with ExitStack() as hooks, torch.inference_mode():
        for tap, backbone in zip(taps, backbones, strict=True):
            hooks.enter_context(tap.hooked())
            tap.probe(backbone.image_size, device, backbone.label)
        for images in batches:
            if len(images) < MIN_BATCH:
                break
            images = to_device(images, device)
            grams = [_grams(b, tap, images) for b, tap in zip(backbones, taps, strict=True)]
            accumulator.update(grams[0], grams[1] if len(grams) > 1 else None)
            on_batch(len(images))
    if accumulator.batches == 0:
        raise ValueError(f"no minibatch of at least {MIN_BATCH} images was seen.")
    return LayerCKA(accumulator.result(), taps[0].taps, taps[-1].taps, accumulator.examples, accumulator.batches)


def _grams(backbone: Backbone, taps: GramTaps, images: Tensor | list[Tensor]) -> list[Tensor]:
    backbone.model(pixel_values=backbone.preprocess(images))
    return taps.take()
