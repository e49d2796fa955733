"""Which layers CKA compares, read from the families map, and forward hooks that turn them into Gram matrices.

`layers=blocks`: the embedding (the input of the first unit), the output of every block and the
pre-head representation (the input of the head; DeiT-distilled's two heads side by side).
`layers=all` adds, inside each block, the output of each direct child that holds parameters
(attention, MLP, norms, convolutions) in the order they run, and the final norm's output.
Each layer's activations become a (batch × batch) Gram matrix inside its hook and are dropped.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hf_tl.analysis.cka import gram
from hf_tl.analysis.tokens import features, model_channels_last, prefix_tokens, works_channels_last
from hf_tl.config.commands import LAYER_CHOICES
from hf_tl.errors import HfTlError
from hf_tl.models.families import Layout, layout
from hf_tl.models.module_tree import under

EMBEDDING, PRE_HEAD = "embedding", "pre-head"
SHAPE_PROBE_IMAGES = 2


@dataclass(frozen=True)
class Tap:
    """One compared layer: a readable name, and the module(s) whose input or output it is."""

    name: str
    modules: tuple[str, ...]
    where: str  # "input" or "output"


def block_names(lay: Layout) -> list[str]:
    """'block 3' for a transformer (or a CNN listed by blocks only); 'stage 2 block 1' inside a CNN stage."""
    if lay.blocks == lay.units:
        return [f"block {i + 1}" for i in range(len(lay.blocks))]
    names, count = [], {}
    for group in lay.blocks:
        stage = next((s for s, unit in enumerate(lay.units) if under(group[0], unit)), None)
        if stage is None:
            return [f"block {i + 1}" for i in range(len(lay.blocks))]
        count[stage] = count.get(stage, 0) + 1
        names.append(f"stage {stage + 1} block {count[stage]}")
    return names


def choose_taps(model: nn.Module, which: str) -> list[Tap]:
    """The layers for `layers=blocks|all`, in model order (sublayers are put in run order by `GramTaps.probe`)."""
    if which not in LAYER_CHOICES:
        raise HfTlError(f"layers='{which}' is not one of: {', '.join(LAYER_CHOICES)}.")
    lay = layout(model)
    modules = dict(model.named_modules())
    taps = [Tap(EMBEDDING, (lay.units[0][0],), "input")]
    for name, group in zip(block_names(lay), lay.blocks, strict=True):
        if which == "all":
            taps += [
                Tap(f"{name} {child}", (f"{member}.{child}",), "output")
                for member in group
                for child, module in modules[member].named_children()
                if any(True for _ in module.parameters())
            ]
        taps.append(Tap(name, (group[-1],), "output"))
    if which == "all":
        taps += [Tap("final norm", (norm,), "output") for norm in lay.norm]
    if lay.heads:
        taps.append(Tap(PRE_HEAD, tuple(lay.heads), "input"))
    return taps


class GramTaps:
    """Hooks on the chosen layers of one model; after each forward pass, `take()` gives one Gram matrix per layer.

    A layer whose hooks fire more than once in a pass (two heads) counts as all it saw, side by side:
    for a linear kernel that is the sum of the Gram matrices.
    """

    def __init__(self, model: nn.Module, which: str, tokens: str) -> None:
        self.model = model
        self.taps = choose_taps(model, which)
        self.tokens = tokens
        self._default_channels_last = model_channels_last(model)
        self._grams: dict[str, Tensor] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._kept: set[str] | None = None  # after `probe`: the layers that ran with one row per image

    @contextmanager
    def hooked(self) -> Iterator[GramTaps]:
        modules = dict(self.model.named_modules())
        handles = []
        for tap in self.taps:
            for name in tap.modules:
                module = modules[name]
                if tap.where == "input":
                    handles.append(module.register_forward_pre_hook(self._input_hook(tap, module), with_kwargs=True))
                else:
                    handles.append(module.register_forward_hook(self._output_hook(tap, module)))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def probe(self, image_size: tuple[int, int], device: torch.device, who: str) -> None:
        """One forward pass on blank images: keep the layers that ran, in the order they ran, with one row per
        image (Swin's window attention has one per window); check that tokens=cls has a class token to take."""
        tokens, self.tokens = self.tokens, "flatten"
        try:
            with torch.inference_mode():
                self.model(pixel_values=torch.zeros(SHAPE_PROBE_IMAGES, 3, *image_size, device=device))
        finally:
            self.tokens = tokens
        ran = [name for name in self._grams if self._shapes[name][0] == SHAPE_PROBE_IMAGES]
        self.taps = sorted((t for t in self.taps if t.name in ran), key=lambda t: ran.index(t.name))
        self._kept = set(ran)
        self._grams.clear()
        embedding = self._shapes.get(EMBEDDING, ())
        if tokens == "cls" and (len(embedding) != 3 or prefix_tokens(self.model, image_size, embedding[1]) == 0):
            raise HfTlError(
                f"tokens=cls: {who} ({layout(self.model).family}) has no class token: its embedding is "
                f"{_shape(embedding)} (Swin and CNNs have none; CaiT adds its class token only in its last, "
                "class-attention blocks). Use tokens=mean or tokens=flatten."
            )

    @property
    def names(self) -> list[str]:
        return [tap.name for tap in self.taps]

    def take(self) -> list[Tensor]:
        """This pass's Gram matrices, one per layer, in layer order."""
        missing = [tap.name for tap in self.taps if tap.name not in self._grams]
        if missing:
            raise HfTlError(f"layers {missing} did not run in this forward pass.")
        grams = [self._grams[tap.name] for tap in self.taps]
        self._grams.clear()
        return grams

    def _record(self, tap: Tap, value: object, module: nn.Module) -> None:
        tensor = first_tensor(value)
        if tensor is None or (self._kept is not None and tap.name not in self._kept):
            return
        self._shapes.setdefault(tap.name, tuple(tensor.shape))
        channels_last = self._default_channels_last
        if tap.where == "output":
            channels_last = works_channels_last(module, channels_last)
        matrix = gram(features(tensor.detach(), self.tokens, channels_last, tap.name))
        self._grams[tap.name] = self._grams[tap.name] + matrix if tap.name in self._grams else matrix

    def _input_hook(self, tap: Tap, module: nn.Module):
        def hook(_module, args, kwargs):
            self._record(tap, args if first_tensor(args) is not None else kwargs, module)

        return hook

    def _output_hook(self, tap: Tap, module: nn.Module):
        def hook(_module, _args, output):
            self._record(tap, output, module)

        return hook


def first_tensor(value: object) -> Tensor | None:
    """The hidden states in what a module takes or returns: a tensor, or the first one in a tuple, list or dict."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        return next((t for t in map(first_tensor, value) if t is not None), None)
    return None


def _shape(shape: tuple[int, ...]) -> str:
    """A probe's shape as a user reads it: the image axis is 'batch'."""
    return "(" + ", ".join(["batch", *map(str, shape[1:])]) + ")" if shape else "(none)"
