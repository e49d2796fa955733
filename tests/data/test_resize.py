"""data.resize: straight to the input size (direct), the checkpoint's own eval pipeline (crop), or auto's choice.

A 500x375 photo squashed to 224x224 is what no published recipe does; 32x32 CIFAR images cropped after an
upscale lose their borders for nothing. auto measures the training images; the processor saved in model/ says
which was done, so pipeline(), `hf-tl eval` and metrics.json see the same pixels.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import digits, save_timm, save_vit
from datasets import load_dataset
from PIL import Image as PILImage
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    BitImageProcessor,
    LevitImageProcessor,
    TimmWrapperImageProcessor,
    pipeline,
)

from hf_tl.cli.eval import parse_args
from hf_tl.config.recipe import DataSection, load_recipe
from hf_tl.data.datasets import Splits, image_sizes, load_splits, resizing_for
from hf_tl.data.preprocess import Preprocess, to_uint8
from hf_tl.data.processors import preprocess_of, processor_for
from hf_tl.errors import DataError
from hf_tl.inference.evaluate import evaluate
from hf_tl.training.run import run

SHAPES = ((50, 70), (70, 50))  # (height, width): wide and tall, each larger than the 32x32 input
CLASSES = ("cool", "warm")
# transformers' processors resize with torch's kernel as Preprocess does (float rounding apart); timm's resizes
# PIL images, within 2 grey levels of torch's (the probe tolerance processors.py allows for the same reason).
TORCH_TOLERANCE = 1e-5
TIMM_GREY_LEVELS = 2.01


def smooth_photo(height: int, width: int, seed: int, tint: int) -> PILImage.Image:
    """A smooth colour image (a photo's kind of content, not noise), red-tinted (tint 1) or blue-tinted (0)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 225, (3, height // 10 + 2, width // 10 + 2), generator=generator).float()
    coarse[0 if tint else 2] += 30
    smooth = torch.nn.functional.interpolate(coarse[None], size=(height, width), mode="bilinear")[0]
    return PILImage.fromarray(smooth.round().clamp(0, 255).byte().permute(1, 2, 0).numpy(), "RGB")


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    """An image folder of 40 images of 50x70 and 70x50, 2 classes: 24 in train/, 16 in test/."""
    root = tmp_path_factory.mktemp("photos") / "photos"
    for split, count in (("train", 12), ("test", 8)):
        for tint, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                seed = i + 100 * tint + (1000 if split == "test" else 0)
                smooth_photo(*SHAPES[i % 2], seed, tint).save(root / split / name / f"{i:03}.png")
    return root


def crop_processor() -> BitImageProcessor:
    """Resize-then-crop, as published checkpoints do (BiT, CLIP: shorter side, then centre crop): 36, then 32."""
    return BitImageProcessor(
        size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )


def splits_of(folder: Path) -> Splits:
    return load_splits(DataSection(dataset=str(folder), eval_split="test"), seed=0)


def digits_splits() -> Splits:
    return Splits(digits(per_class=8), digits(per_class=2), [], "image", "label", "x")


def test_image_sizes_are_read_from_a_seeded_sample(photo_folder):
    train = splits_of(photo_folder).train
    sizes = image_sizes(train, "image", count=10)
    assert len(sizes) == 10 and set(sizes) == set(SHAPES)
    assert image_sizes(train, "image", count=10) == sizes  # the same sample every time
    assert sorted(image_sizes(train, "image")) == sorted(SHAPES * 12)  # fewer images than the sample: all


def test_auto_crops_images_at_least_the_input_size(photo_folder):
    resizing = resizing_for(crop_processor(), DataSection(dataset="x"), splits_of(photo_folder))
    assert (resizing.resize, resizing.chosen_by) == ("crop", "auto")
    assert resizing.reason == "median shorter side 50 px of 24 sampled training images >= input 32"
    assert resizing.preprocess == preprocess_of(crop_processor())  # the checkpoint's own eval pipeline
    assert resizing.preprocess == Preprocess((32, 32), "bicubic", (0.5,) * 3, (0.5,) * 3, resize=36)
    assert resizing.record() == {
        "resize": "crop",
        "chosen_by": "auto",
        "reason": resizing.reason,
        "size": [32, 32],
        "resize_to": 36,
        "interpolation": "bicubic",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
    }


def test_auto_resizes_smaller_images_directly_as_before():
    resizing = resizing_for(crop_processor(), DataSection(dataset="x"), digits_splits())
    assert (resizing.resize, resizing.chosen_by) == ("direct", "auto")
    assert resizing.reason == "median shorter side 8 px of 40 sampled training images < input 32"
    assert resizing.preprocess == Preprocess((32, 32), "bilinear", (0.5,) * 3, (0.5,) * 3)
    assert resizing.record()["resize_to"] == [32, 32]


def test_the_filter_is_the_processors_under_crop_bilinear_under_direct_unless_the_recipe_names_one(photo_folder):
    splits = splits_of(photo_folder)

    def filter_of(**data) -> str:
        return resizing_for(crop_processor(), DataSection(dataset="x", **data), splits).preprocess.interpolation

    assert (filter_of(resize="crop"), filter_of(resize="direct")) == ("bicubic", "bilinear")
    assert filter_of(resize="crop", interpolation="nearest") == filter_of(resize="direct", interpolation="nearest")
    assert filter_of(resize="direct", interpolation="nearest") == "nearest"


def test_crop_takes_the_recipes_normalisation(photo_folder):
    cfg = DataSection(dataset="x", resize="crop", image_mean=[0.2, 0.3, 0.4], image_std=[0.3, 0.3, 0.3])
    resizing = resizing_for(crop_processor(), cfg, splits_of(photo_folder), channels_last=True)
    assert resizing.chosen_by == "recipe" and resizing.reason == "data.resize=crop in the recipe"
    expected = Preprocess((32, 32), "bicubic", (0.2, 0.3, 0.4), (0.3,) * 3, channels_last=True, resize=36)
    assert resizing.preprocess == expected


def test_a_crop_and_a_direct_run_never_share_a_feature_cache_store(photo_folder):
    """The cache's key holds Preprocess.key() (hf_tl/training/cache/features.py)."""
    splits = splits_of(photo_folder)
    crop, direct = (
        resizing_for(crop_processor(), DataSection(dataset="x", resize=r), splits) for r in ("crop", "direct")
    )
    assert crop.preprocess.key() != direct.preprocess.key()


def test_a_crop_hf_tl_cannot_batch_is_refused_or_replaced_by_direct(photo_folder, capsys):
    """LeViT scales its shorter side by 256/224 first: the processor itself would have to run, image by image."""
    splits = splits_of(photo_folder)
    levit = LevitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    with pytest.raises(
        DataError,
        match=r"data.resize=crop: the image processor \(LevitImageProcessor\).*"
        "Set data.resize=direct",
    ):
        resizing_for(levit, DataSection(dataset="x", resize="crop"), splits)
    resizing = resizing_for(levit, DataSection(dataset="x"), splits)
    assert (resizing.resize, resizing.chosen_by) == ("direct", "auto")
    assert resizing.reason.startswith("median shorter side 50 px of 24 sampled training images >= input 32, but ")
    assert "(LevitImageProcessor) does what hf_tl cannot batch" in resizing.reason
    assert resizing.preprocess == Preprocess((32, 32), "bilinear", tuple(levit.image_mean), tuple(levit.image_std))


@pytest.mark.parametrize(
    "pretrained_cfg",
    [
        {"input_size": [3, 224, 224], "crop_pct": 0.875, "crop_mode": "center", "interpolation": "bicubic"},
        {"input_size": [3, 32, 32], "crop_pct": 0.9, "interpolation": "bilinear"},  # crop_mode center by default
        {"input_size": [3, 32, 32], "interpolation": "bilinear"},  # crop_pct 0.875 by default
        {"input_size": [3, 30, 40], "crop_pct": 0.8, "crop_mode": "squash", "interpolation": "bicubic"},
    ],
)
def test_a_timm_crop_is_written_as_the_pretrained_cfg_that_does_it(pretrained_cfg):
    """timm resizes to floor(input / crop_pct): the crop_pct written gives back the resize that was used."""
    cfg = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], **pretrained_cfg}
    used = preprocess_of(TimmWrapperImageProcessor(pretrained_cfg=cfg))
    assert used.resize is not None  # a crop
    config = SimpleNamespace(pretrained_cfg={"architecture": "resnet18"}, architecture="resnet18")
    saved = processor_for(used, TimmWrapperImageProcessor(pretrained_cfg=cfg), config)
    assert preprocess_of(saved) == used
    written = config.pretrained_cfg
    height, width = written["input_size"][-2:]
    resized = used.resize if isinstance(used.resize, tuple) else (used.resize, used.resize)
    assert (math.floor(height / written["crop_pct"]), math.floor(width / written["crop_pct"])) == resized
    image = smooth_photo(61, 45, seed=7, tint=1)
    ours, theirs = used(to_uint8(image)[None]), saved(images=[image], return_tensors="pt").pixel_values
    assert ours.shape == theirs.shape
    assert _grey_levels(ours - theirs, used.std) <= TIMM_GREY_LEVELS


def _grey_levels(difference: torch.Tensor, std: tuple[float, ...]) -> float:
    """A difference of normalised pixels in grey levels (0-255)."""
    return (difference * torch.tensor(std).view(1, -1, 1, 1) * 255).abs().max().item()


def within_torch_tolerance(ours: torch.Tensor, theirs: torch.Tensor, std: tuple[float, ...]) -> bool:
    return (ours - theirs).abs().max().item() < TORCH_TOLERANCE


def within_timm_tolerance(ours: torch.Tensor, theirs: torch.Tensor, std: tuple[float, ...]) -> bool:
    return _grey_levels(ours - theirs, std) <= TIMM_GREY_LEVELS


def vit_behind_a_crop_processor(folder: Path) -> Path:
    save_vit(folder, image_size=32)
    crop_processor().save_pretrained(folder)
    return folder


def timm_with_crop_pct(folder: Path) -> Path:
    save_timm(folder, "resnet18", layers=[1, 1, 1, 1], channels=[8, 8, 8, 8])
    config = json.loads((folder / "config.json").read_text())
    config["pretrained_cfg"].update(crop_pct=0.875, crop_mode="center", interpolation="bicubic")  # 36, then 32
    (folder / "config.json").write_text(json.dumps(config))
    return folder


CROP_RUNS = {  # the base model, its recipe overrides, how the run chose crop, how close its saved processor comes
    "vit": (vit_behind_a_crop_processor, ["data.resize=auto"], "auto", within_torch_tolerance),
    "timm": (
        timm_with_crop_pct,
        ["data.resize=crop", "strategy.kind=full", "training.lr=3e-3", "training.epochs=8", "training.batch_size=4"],
        "recipe",
        within_timm_tolerance,
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(CROP_RUNS))
def test_a_crop_run_agrees_with_pipeline_and_eval(kind, photo_folder, tmp_path):
    make, overrides, chosen_by, close = CROP_RUNS[kind]
    base = make(tmp_path / "base")
    recipe = load_recipe(
        "quickstart",
        [
            f"model.name={base}",
            f"data.dataset={photo_folder}",
            "data.eval_split=test",
            "training.epochs=2",
            "training.batch_size=8",
            f"output.dir={tmp_path / 'run'}",
            *overrides,
        ],
    )
    run_dir = run(recipe)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    used = resizing_for(AutoImageProcessor.from_pretrained(base), recipe.data, splits_of(photo_folder)).preprocess
    assert metrics["preprocessing"] == {**metrics["preprocessing"], "resize": "crop", "chosen_by": chosen_by}
    assert metrics["preprocessing"]["resize_to"] == 36 and used.resize == 36

    saved = AutoImageProcessor.from_pretrained(run_dir / "model")
    assert preprocess_of(saved) == used  # the processor in model/ describes the run's evaluation exactly
    test = load_dataset(str(photo_folder))["test"]
    ours = used([to_uint8(image) for image in test["image"]])  # of two sizes: one by one
    theirs = saved(images=list(test["image"]), return_tensors="pt").pixel_values
    assert ours.shape == theirs.shape and close(ours, theirs, used.std)

    model = AutoModelForImageClassification.from_pretrained(run_dir / "model").eval()
    with torch.no_grad():
        run_labels = [model.config.id2label[i] for i in model(pixel_values=ours).logits.argmax(-1).tolist()]
    classify = pipeline("image-classification", model=str(run_dir / "model"), device="cpu")
    piped = [p[0]["label"] for p in classify(list(test["image"]), top_k=1, batch_size=8)]
    assert piped == run_labels  # the same top-1 label for every image
    assert set(piped) == set(CLASSES)  # a model that tells the classes apart: the comparison has teeth
    names = test.features["label"].names
    accuracy = sum(p == names[label] for p, label in zip(piped, test["label"], strict=True)) / len(piped)
    assert accuracy == metrics["eval"]["accuracy"]
    evaluated = evaluate(
        parse_args([f"model={run_dir}", f"dataset={photo_folder}", "split=test", f"output={tmp_path / 'e'}"])
    )
    assert evaluated["metrics"]["accuracy"] == metrics["eval"]["accuracy"]


def test_a_quickstart_style_run_on_digits_resizes_directly(tiny_vit, digits_dir, tmp_path, capsys):
    """8x8 digits, a 16x16 input: auto upscales straight to it, as every run did before data.resize."""
    recipe = load_recipe(
        "quickstart",
        [
            f"model.name={tiny_vit}",
            f"data.dataset={digits_dir}",
            "data.max_train_samples=32",
            "data.max_eval_samples=16",
            "training.epochs=1",
            "training.batch_size=16",
            f"output.dir={tmp_path / 'run'}",
        ],
    )
    preprocessing = json.loads((run(recipe) / "metrics.json").read_text())["preprocessing"]
    reason = "median shorter side 8 px of 32 sampled training images < input 16"
    assert preprocessing == {
        "resize": "direct",
        "chosen_by": "auto",
        "reason": reason,
        "size": [16, 16],
        "resize_to": [16, 16],
        "interpolation": "bilinear",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
    }
    assert f"hf_tl: data.resize=auto chose direct: {reason}\n" in capsys.readouterr().out
