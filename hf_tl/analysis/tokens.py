"""One feature row per image from a layer's output, and where a ViT-like model keeps its class tokens.

Token outputs are (B, N, D); feature maps (B, C, H, W), or (B, H, W, C) where a layer works
channels-last (a Linear or LayerNorm inside a ConvNeXt block, timm's Swin stages).
"""

from __future__ import annotations

from torch import Tensor, nn

from hf_tl.errors import HfTlError


def features(output: Tensor, tokens: str, channels_last: bool = False, layer: str = "") -> Tensor:
    """(B, d): `flatten` keeps everything, `mean` averages over tokens or positions, `cls` takes token 0."""
    if output.ndim <= 2:  # already one vector per image (a head's input)
        return output.reshape(len(output), -1)
    if tokens == "flatten":
        return output.flatten(1)
    if output.ndim == 3:
        return output[:, 0] if tokens == "cls" else output.mean(dim=1)
    if tokens == "cls":
        raise HfTlError(
            f"tokens=cls: layer '{layer}' outputs a feature map {tuple(output.shape)}, which has no class token; "
            "use tokens=mean or tokens=flatten."
        )
    spatial = tuple(range(1, output.ndim - 1)) if channels_last else tuple(range(2, output.ndim))
    return output.mean(dim=spatial)


def works_channels_last(module: nn.Module, default: bool) -> bool:
    """Whether a 4-D output of `module` is (B, H, W, C): layers that act on the last axis make it so."""
    data_format = getattr(module, "data_format", None)  # ConvNeXt's LayerNorm says which it uses
    if data_format in ("channels_last", "channels_first"):
        return data_format == "channels_last"
    return True if isinstance(module, (nn.Linear, nn.LayerNorm)) else default


def model_channels_last(model: nn.Module) -> bool:
    """timm models that keep their stages channels-last say so (Swin: output_fmt 'NHWC')."""
    return str(getattr(getattr(model, "timm_model", None), "output_fmt", "NCHW")) == "NHWC"


def patch_size(model: nn.Module) -> tuple[int, int] | None:
    """The patch edge of a ViT-like model, in input pixels; None for models that do not cut patches."""
    inner = getattr(model, "timm_model", None)
    size = getattr(getattr(inner, "patch_embed", None), "patch_size", None) if inner is not None else None
    if size is None and inner is None:
        size = getattr(model.config, "patch_size", None)
    if size is None:
        return None
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def prefix_tokens(model: nn.Module, image_size: tuple[int, int], embedding_tokens: int) -> int:
    """Tokens before the patches in the embedding (class, distillation, register): its length less the patch grid."""
    patch = patch_size(model)
    if patch is None:
        return 0
    grid = (image_size[0] // patch[0]) * (image_size[1] // patch[1])
    return max(0, embedding_tokens - grid)
