"""Image processors, read and written, so that a checkpoint preprocesses at inference as it was evaluated.

Reading: `preprocess_of` turns any checkpoint's processor (transformers' own, or timm's data config
through transformers' timm wrapper) into the batched `Preprocess` that does what the processor does:
size, resize-then-centre-crop, filter, mean and std. `hf-tl eval` and `hf-tl analyze` use it.

Writing: a run evaluates with its own preprocessing (straight to the input size, or the checkpoint's
resize-then-crop: data.resize; perhaps the recipe's filter, mean and std), which is seldom exactly what the
base checkpoint's processor does. `processor_for`
makes the processor that describes the run's, and that is what `model/` carries, so `pipeline()`,
`hf-tl eval` and the run's `metrics.json` see the same pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torchvision.transforms.v2 import functional as TF
from transformers import ViTImageProcessor
from transformers.image_utils import PILImageResampling

from hf_tl.data.preprocess import INTERPOLATIONS, Preprocess
from hf_tl.errors import DataError

FILTERS = {
    PILImageResampling.NEAREST: "nearest",
    PILImageResampling.BILINEAR: "bilinear",
    PILImageResampling.BICUBIC: "bicubic",
}
RESAMPLE = {name: resample for resample, name in FILTERS.items()}
RESCALE = 1 / 255
CONVNEXT_WARP_EDGE = 384  # ConvNextImageProcessor warps to a square at this edge and above, without a crop
# The batched form stands for the processor when, on the probes, it is within this (normalised units: 6 grey
# levels at ImageNet's std; timm resizes PIL images, which differs from torch's kernel by up to 2).
PROBE_TOLERANCE = 0.1
PROBE_SHAPES = ((61, 37), (45, 80))


def is_timm(processor: Any) -> bool:
    """transformers' timm wrapper keeps the processor's settings as timm's data config."""
    return hasattr(processor, "data_config")


def preprocess_of(processor: Any, interpolation: str | None = None) -> Preprocess | OwnProcessor:
    """What `processor` does to an image at inference, batched; `interpolation` overrides its filter.

    The batched form is checked against the processor itself on probe images. A processor with a step it
    does not reproduce (LeViT's scaled shorter side, MobileViT's BGR channels, a crop before the resize, a
    timm centre crop of a non-square input) is then run as it is, image by image: slower, never different.
    """
    try:
        batched = _batched(processor, interpolation)
    except DataError as e:
        if interpolation is not None or not _fixed_output_size(processor):
            raise
        batched, why = None, str(e)
    if interpolation is not None:  # a filter the processor does not use: only the batched form has it
        return batched
    if batched is not None:
        why = _disagreement(batched, processor)
        if why is None:
            return batched
    print(
        f"hf_tl: the image processor ({type(processor).__name__}) does what hf_tl does not batch ({why}); "
        "each image goes through the processor itself (slower, the same pixels)",
        flush=True,
    )
    return OwnProcessor(processor)


def checked_preprocess(processor: Any) -> tuple[Preprocess | None, str | None]:
    """The processor's own evaluation pipeline as a batched `Preprocess`, checked on the probe images; else None and
    why not. Training (data.resize=crop) needs the batched form: the processor itself cannot flip or run on a device."""
    try:
        batched = _batched(processor, None)
    except DataError as e:
        return None, str(e)
    why = _disagreement(batched, processor)
    return (batched, None) if why is None else (None, why)


def _batched(processor: Any, interpolation: str | None) -> Preprocess:
    batched = _timm_preprocess(processor.data_config, interpolation) if is_timm(processor) else None
    return batched or _transformers_preprocess(processor, interpolation)


@dataclass(frozen=True)
class OwnProcessor:
    """A checkpoint's image processor itself, image by image, behind `Preprocess`'s interface (uint8 in)."""

    processor: Any

    def __call__(self, images: torch.Tensor | list[torch.Tensor], flips: torch.Tensor | None = None) -> torch.Tensor:
        if flips is not None:
            raise ValueError("OwnProcessor serves evaluation only: it does not flip")
        device = images[0].device
        pictures = [TF.to_pil_image(image.cpu()) for image in images]
        return self.processor(images=pictures, return_tensors="pt")["pixel_values"].to(device)


def probe_images() -> list[torch.Tensor]:
    """Two smooth colour images (a photo's kind of content, not noise), one tall and one wide, odd-sized."""
    generator = torch.Generator().manual_seed(0)
    probes = []
    for height, width in PROBE_SHAPES:
        coarse = torch.randint(0, 256, (1, 3, height // 8 + 2, width // 8 + 2), generator=generator)
        smooth = torch.nn.functional.interpolate(coarse.float(), size=(height, width), mode="bilinear")
        probes.append(smooth.round().clamp(0, 255).to(torch.uint8))
    return probes


def _disagreement(batched: Preprocess, processor: Any) -> str | None:
    """Why the batched form differs from the processor's own output on the probes; None when it does not."""
    for probe in probe_images():
        try:
            ours = batched(probe)
        except ValueError as e:  # a geometry Preprocess cannot take (a crop larger than the resized image)
            return str(e)
        theirs = OwnProcessor(processor)(probe)
        if ours.shape != theirs.shape:
            return f"output {tuple(theirs.shape[-2:])}, not {tuple(ours.shape[-2:])}"
        difference = (ours - theirs).abs().max().item()
        if not difference <= PROBE_TOLERANCE:
            return f"pixels differ by up to {difference:.2f} on a probe image"
    return None


def _fixed_output_size(processor: Any) -> bool:
    """Whether the processor gives every image the same size, so that its outputs stack into one batch."""
    try:
        shapes = {tuple(OwnProcessor(processor)(probe).shape) for probe in probe_images()}
    except Exception:  # any processor's own failure: it cannot stand in for the batched form
        return False
    return len(shapes) == 1


def processor_for(preprocess: Preprocess, processor: Any, config: Any) -> Any:
    """The processor to save with a model trained and evaluated with `preprocess`.

    transformers models get a `ViTImageProcessor`, the plainest that resizes to a size (or a shorter
    side), centre-crops, rescales and normalises. A timm model's processor lives in `config.pretrained_cfg`
    (config.json, where timm and transformers read it): that is updated in place.
    """
    if is_timm(processor):
        config.pretrained_cfg = {**config.pretrained_cfg, **_timm_settings(preprocess)}
        return type(processor)(pretrained_cfg=config.pretrained_cfg, architecture=config.architecture)
    resize = preprocess.resize
    if resize is None:
        size, crop = {"height": preprocess.size[0], "width": preprocess.size[1]}, None
    elif isinstance(resize, tuple):
        size, crop = {"height": resize[0], "width": resize[1]}, preprocess.size
    else:
        size, crop = {"shortest_edge": resize}, preprocess.size
    return ViTImageProcessor(
        do_resize=True,
        size=size,
        resample=RESAMPLE[preprocess.interpolation],
        do_center_crop=crop is not None,
        crop_size={"height": crop[0], "width": crop[1]} if crop else None,
        do_rescale=True,
        rescale_factor=RESCALE,
        do_normalize=preprocess.normalize,
        image_mean=list(preprocess.mean),
        image_std=list(preprocess.std),
        do_convert_rgb=True,  # hf_tl trains on RGB: grey and RGBA images are converted, as in training
    )


def _transformers_preprocess(processor: Any, interpolation: str | None) -> Preprocess:
    name = type(processor).__name__
    if not getattr(processor, "do_resize", True):
        raise DataError(f"the image processor ({name}) does not resize; hf_tl needs a fixed input size.")
    if getattr(processor, "do_rescale", True) is False or not math.isclose(
        getattr(processor, "rescale_factor", RESCALE), RESCALE
    ):
        raise DataError(f"the image processor ({name}) does not rescale pixels by 1/255; hf_tl cannot reproduce it.")
    size = _size_fields(processor.size)
    crop = _size_fields(processor.crop_size) if getattr(processor, "do_center_crop", False) else {}
    crop_pct = getattr(processor, "crop_pct", None)
    if size.get("height") and size.get("width"):
        resize: tuple[int, int] | int = (size["height"], size["width"])
    elif size.get("shortest_edge") and not size.get("longest_edge") and crop_pct:  # ConvNeXt's rule
        edge = size["shortest_edge"]
        if edge >= CONVNEXT_WARP_EDGE:
            resize, crop = (edge, edge), {}
        else:
            resize, crop = int(edge / crop_pct), {"height": edge, "width": edge}
    elif size.get("shortest_edge") and not size.get("longest_edge"):
        resize = size["shortest_edge"]
    else:
        raise DataError(f"the image processor ({name}) resizes to {processor.size}, which hf_tl cannot reproduce.")
    if crop:
        final = (crop["height"], crop["width"])
    elif isinstance(resize, tuple):
        final = resize
    else:
        raise DataError(f"the image processor ({name}) keeps the aspect ratio without a crop: no fixed input size.")
    mean, std = list(processor.image_mean), list(processor.image_std)
    return _preprocess(
        final,
        resize,
        _filter(processor.resample, interpolation, name),
        mean,
        std,
        bool(getattr(processor, "do_normalize", True)),
        "floor",
    )


def _timm_preprocess(data_config: dict, interpolation: str | None) -> Preprocess:
    """timm's eval transform (transforms_imagenet_eval): scale by 1/crop_pct, then centre-crop (torchvision rounds)."""
    height, width = data_config["input_size"][-2:]
    crop_pct = data_config.get("crop_pct") or 0.875
    mode = data_config.get("crop_mode") or "center"
    scaled = (math.floor(height / crop_pct), math.floor(width / crop_pct))
    if mode == "squash" or (mode == "center" and scaled[0] != scaled[1]):
        resize: tuple[int, int] | int = scaled
    elif mode == "center":
        resize = scaled[0]
    else:
        raise DataError(f"timm's crop_mode '{mode}' pads images; hf_tl cannot reproduce it.")
    filter_name = data_config.get("interpolation") or "bilinear"
    if interpolation is None and filter_name not in INTERPOLATIONS:
        raise DataError(f"timm's interpolation '{filter_name}' is not supported; pass interpolation=bilinear|bicubic.")
    return _preprocess(
        (height, width),
        resize,
        interpolation or filter_name,
        list(data_config["mean"]),
        list(data_config["std"]),
        True,
        "round",
    )


def _preprocess(final, resize, interpolation, mean, std, normalize, crop_offset) -> Preprocess:
    """A Preprocess; `resize` (and how a crop splits its margin) is dropped when it goes straight to the final size."""
    if resize == tuple(final):
        resize, crop_offset = None, "floor"
    return Preprocess(tuple(final), interpolation, tuple(mean), tuple(std), normalize, False, resize, crop_offset)


def _timm_settings(preprocess: Preprocess) -> dict:
    """pretrained_cfg keys for timm's eval transform (transforms_imagenet_eval) that reproduce `preprocess`.

    Straight resizing is a squash at crop_pct 1. timm resizes to floor(input / crop_pct) per edge, then centre-crops
    (rounding an odd margin): a shorter-side resize is crop_mode center (square inputs: timm keeps the ratio another
    way for others), a resize to (h, w) a squash, each with the crop_pct that gives back the resize.
    """
    settings = {
        "input_size": [3, *preprocess.size],
        "interpolation": preprocess.interpolation,
        "mean": list(preprocess.mean),
        "std": list(preprocess.std),
    }
    resize = preprocess.resize
    if resize is None:
        return {**settings, "crop_pct": 1.0, "crop_mode": "squash"}
    if preprocess.crop_offset != "round":
        raise NotImplementedError("timm's centre crop rounds an odd margin; this preprocessing floors it")
    if isinstance(resize, int):
        if preprocess.size[0] != preprocess.size[1]:
            raise NotImplementedError("timm scales the shorter side this way only for a square input size")
        return {**settings, "crop_pct": crop_pct_for(preprocess.size, (resize, resize)), "crop_mode": "center"}
    return {**settings, "crop_pct": crop_pct_for(preprocess.size, resize), "crop_mode": "squash"}


def crop_pct_for(size: tuple[int, int], resize: tuple[int, int]) -> float:
    """The shortest decimal crop_pct for which timm's `math.floor(edge / crop_pct)` gives `resize` from `size`."""
    low = max(edge / (target + 1) for edge, target in zip(size, resize, strict=True))  # crop_pct lies above this
    high = min(edge / target for edge, target in zip(size, resize, strict=True))  # ... and at most this
    for digits in range(1, 16):
        nearest = round(high, digits)
        for pct in (nearest, round(nearest - 10**-digits, digits)):  # edge / high itself may round down in floats
            if low < pct <= high and all(math.floor(e / pct) == t for e, t in zip(size, resize, strict=True)):
                return pct
    raise NotImplementedError(f"no crop_pct makes timm resize {size[0]}x{size[1]} to {resize[0]}x{resize[1]}")


def _size_fields(size: Any) -> dict:
    """A processor's size as a plain dict: transformers 5 keeps a SizeDict, configs on disk an int or a dict."""
    if size is None:
        return {}
    if isinstance(size, int):
        return {"height": size, "width": size}
    if isinstance(size, dict):
        return {k: v for k, v in size.items() if v}
    return {k: v for k, v in vars(size).items() if v}


def _filter(resample: Any, interpolation: str | None, name: str) -> str:
    if interpolation:
        return interpolation
    try:
        return FILTERS[PILImageResampling(resample)]
    except (ValueError, KeyError):
        raise DataError(
            f"the image processor ({name}) resizes with filter {resample}, which hf_tl does not reproduce; "
            "pass interpolation=bilinear|bicubic|nearest to choose one."
        ) from None
