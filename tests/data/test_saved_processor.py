"""The processor saved in model/ does what the run's evaluation did: `pipeline()`, `hf-tl eval` and metrics.json agree.

A run resizes straight to the model's input size with the recipe's filter and normalisation, which is seldom
what the base checkpoint's processor does (DeiT resizes to 256 then crops 224; a recipe may set its own mean
and std). A checkpoint whose processor differs from training is silently worse for everyone who loads it.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import save_timm
from datasets import load_from_disk
from PIL import Image
from transformers import (
    AutoImageProcessor,
    BitImageProcessor,
    ConvNextImageProcessor,
    DeiTImageProcessor,
    EfficientNetImageProcessor,
    LevitImageProcessor,
    MobileViTImageProcessor,
    PerceiverImageProcessor,
    PoolFormerImageProcessor,
    TimmWrapperImageProcessor,
    ViTImageProcessor,
    pipeline,
)

from hf_tl.cli.eval import parse_args
from hf_tl.config.recipe import load_recipe
from hf_tl.config.resources import asset_path
from hf_tl.data.preprocess import Preprocess, to_uint8
from hf_tl.data.processors import OwnProcessor, preprocess_of, processor_for
from hf_tl.inference.evaluate import evaluate
from hf_tl.training.run import run

# Base processors of the three kinds the trust issue names; each run trains a tiny ViT behind it.
BASE_PROCESSORS = {
    "vit_style": lambda: ViTImageProcessor(size={"height": 16, "width": 16}),
    # DeiT's kind: resize to 20x20 with bicubic, then centre-crop 16x16 (DeiT-B: 256 then 224).
    "resize_then_crop": lambda: DeiTImageProcessor(
        size={"height": 20, "width": 20}, crop_size={"height": 16, "width": 16}, image_mean=[0.485, 0.456, 0.406]
    ),
    "vit_style_normalisation_override": lambda: ViTImageProcessor(size={"height": 16, "width": 16}),
}
OVERRIDES = {
    "vit_style": [],
    "resize_then_crop": [],
    "vit_style_normalisation_override": [
        "data.image_mean=[0.2,0.3,0.4]",
        "data.image_std=[0.3,0.3,0.3]",
        "data.interpolation=bicubic",
    ],
}


def train_behind(processor_name: str, tmp_path, digits_splits_dir):
    """The quickstart backbone (a tiny ViT pretrained on digits), behind another processor, fine-tuned briefly."""
    model = tmp_path / "base"
    shutil.copytree(asset_path("quickstart/backbone"), model)
    (model / "preprocessor_config.json").unlink()
    BASE_PROCESSORS[processor_name]().save_pretrained(model)
    recipe = load_recipe(
        "quickstart",
        [
            f"model.name={model}",
            f"data.dataset={digits_splits_dir}",
            "data.eval_split=test",
            "training.epochs=2",
            "training.batch_size=16",
            f"output.dir={tmp_path / 'run'}",
            *OVERRIDES[processor_name],
        ],
    )
    return run(recipe)


def pipeline_accuracy(model_dir, dataset_dir, split="test") -> float:
    """Accuracy as a transformers user measures it: pipeline() on the images, labels matched by name."""
    classify = pipeline("image-classification", model=str(model_dir), device="cpu")
    data = load_from_disk(str(dataset_dir))[split]
    names = data.features["label"].names
    predictions = classify(list(data["image"]), top_k=1, batch_size=32)
    hits = [p[0]["label"] == names[label] for p, label in zip(predictions, data["label"], strict=True)]
    return sum(hits) / len(hits)


@pytest.mark.slow
@pytest.mark.parametrize("processor_name", list(BASE_PROCESSORS))
def test_pipeline_and_eval_give_the_accuracy_in_metrics(processor_name, tmp_path, digits_splits_dir):
    run_dir = train_behind(processor_name, tmp_path, digits_splits_dir)
    recorded = json.loads((run_dir / "metrics.json").read_text())["eval"]["accuracy"]
    assert 0.3 < recorded < 1.0, "a run that learned something, and still errs: the comparison has teeth"
    assert pipeline_accuracy(run_dir / "model", digits_splits_dir) == recorded
    evaluated = evaluate(
        parse_args([f"model={run_dir}", f"dataset={digits_splits_dir}", "split=test", f"output={tmp_path / 'e'}"])
    )
    assert evaluated["metrics"]["accuracy"] == recorded


@pytest.mark.slow
def test_timm_checkpoint_records_the_run_preprocessing_in_its_pretrained_cfg(tmp_path, digits_splits_dir):
    """timm models keep their processor in config.json's pretrained_cfg, which timm and transformers both read."""
    model = save_timm(tmp_path / "base", "resnet18", layers=[1, 1, 1, 1], channels=[8, 8, 8, 8])
    config = json.loads((model / "config.json").read_text())
    config["pretrained_cfg"].update(crop_pct=0.875, crop_mode="center", interpolation="bicubic")
    (model / "config.json").write_text(json.dumps(config))
    recipe = load_recipe(
        "quickstart",
        [
            f"model.name={model}",
            f"data.dataset={digits_splits_dir}",
            "data.eval_split=test",
            "strategy.kind=full",
            "training.epochs=1",
            "data.image_mean=[0.2,0.3,0.4]",
            f"output.dir={tmp_path / 'run'}",
        ],
    )
    run_dir = run(recipe)
    saved = AutoImageProcessor.from_pretrained(run_dir / "model")
    assert isinstance(saved, TimmWrapperImageProcessor)
    assert preprocess_of(saved) == Preprocess((32, 32), "bilinear", (0.2, 0.3, 0.4), (0.5, 0.5, 0.5))
    recorded = json.loads((run_dir / "metrics.json").read_text())["eval"]["accuracy"]
    evaluated = evaluate(
        parse_args([f"model={run_dir}", f"dataset={digits_splits_dir}", "split=test", f"output={tmp_path / 'e'}"])
    )
    assert evaluated["metrics"]["accuracy"] == recorded


@pytest.mark.parametrize(
    "preprocess",
    [
        Preprocess((16, 16), "bilinear", (0.5,) * 3, (0.5,) * 3),
        Preprocess((24, 20), "bicubic", (0.2, 0.3, 0.4), (0.3,) * 3),
        Preprocess((16, 16), "nearest", (0.0,) * 3, (1.0,) * 3, normalize=False),
        Preprocess((16, 16), "bicubic", (0.5,) * 3, (0.5,) * 3, resize=(20, 20)),
        Preprocess((16, 16), "bilinear", (0.5,) * 3, (0.5,) * 3, resize=18),
    ],
)
def test_a_written_processor_reads_back_as_the_same_preprocessing(preprocess, tmp_path):
    processor_for(preprocess, ViTImageProcessor(), None).save_pretrained(tmp_path)
    assert preprocess_of(AutoImageProcessor.from_pretrained(tmp_path)) == preprocess


def photo(height: int, width: int, seed: int) -> Image.Image:
    """A smooth colour image of any aspect ratio (a photo's kind of content, not noise)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, 256, (3, height // 8 + 2, width // 8 + 2), generator=generator, dtype=torch.uint8)
    smooth = torch.nn.functional.interpolate(coarse[None].float(), size=(height, width), mode="bilinear")[0]
    return Image.fromarray(smooth.round().clamp(0, 255).byte().permute(1, 2, 0).numpy(), "RGB")


PUBLISHED_KINDS = {
    "vit": lambda: ViTImageProcessor(),
    "deit": lambda: DeiTImageProcessor(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]),
    "convnext_crop_pct": lambda: ConvNextImageProcessor(size={"shortest_edge": 224}, crop_pct=0.875, resample=3),
    "convnext_warp": lambda: ConvNextImageProcessor(size={"shortest_edge": 384}),
    "bit_shortest_edge_then_crop": lambda: BitImageProcessor(),
}


@pytest.mark.parametrize("kind", list(PUBLISHED_KINDS))
@pytest.mark.parametrize("shape", [(375, 500), (61, 37), (32, 32), (301, 300)])
def test_eval_preprocessing_equals_the_checkpoints_own_processor(kind, shape):
    """`hf-tl eval` and analyze read any checkpoint's processor: size, shorter-side resize, crop, filter, mean, std."""
    processor = PUBLISHED_KINDS[kind]()
    image = photo(*shape, seed=shape[0])
    batched = preprocess_of(processor)
    assert isinstance(batched, Preprocess)  # batched, not the processor run image by image
    ours = batched(to_uint8(image)[None])
    theirs = processor(images=[image], return_tensors="pt").pixel_values
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() < 1e-5


@pytest.mark.parametrize(
    "pretrained_cfg",
    [
        {"crop_pct": 0.875, "crop_mode": "center", "interpolation": "bicubic"},
        {"crop_pct": 0.95, "interpolation": "bicubic"},
        {"crop_pct": 1.0, "crop_mode": "squash", "interpolation": "bilinear"},
    ],
)
@pytest.mark.parametrize("shape", [(375, 500), (61, 37), (301, 300)])
def test_eval_preprocessing_follows_timms_eval_transform(pretrained_cfg, shape):
    """timm's processor resizes PIL images: the same geometry, and pixels within 2 grey levels of torch's kernel."""
    cfg = {"input_size": [3, 224, 224], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], **pretrained_cfg}
    processor = TimmWrapperImageProcessor(pretrained_cfg=cfg)
    image = photo(*shape, seed=shape[1])
    batched = preprocess_of(processor)
    assert isinstance(batched, Preprocess)
    ours = batched(to_uint8(image)[None])
    theirs = processor(images=[image], return_tensors="pt").pixel_values
    assert ours.shape == theirs.shape
    grey_levels = ((ours - theirs) * torch.tensor(cfg["std"]).view(1, 3, 1, 1) * 255).abs().max().item()
    assert grey_levels <= 2.01


UNBATCHED_KINDS = {
    "levit_scaled_shorter_side": lambda: LevitImageProcessor(),
    "mobilevit_bgr": lambda: MobileViTImageProcessor(),
    "efficientnet_normalises_twice": lambda: EfficientNetImageProcessor(include_top=True),
    "perceiver_crops_then_resizes": lambda: PerceiverImageProcessor(),
    "poolformer_size_and_crop_pct": lambda: PoolFormerImageProcessor(size={"height": 224, "width": 224}),
    "timm_centre_crop_not_square": lambda: TimmWrapperImageProcessor(
        pretrained_cfg={"input_size": [3, 224, 320], "mean": [0.5] * 3, "std": [0.5] * 3, "crop_mode": "center"}
    ),
}


@pytest.mark.parametrize("kind", list(UNBATCHED_KINDS))
def test_a_processor_hf_tl_does_not_batch_is_run_as_it_is(kind, capsys):
    """Steps the batched form does not have are found on probe images, never silently skipped."""
    processor = UNBATCHED_KINDS[kind]()
    used = preprocess_of(processor)
    assert isinstance(used, OwnProcessor)
    assert f"the image processor ({type(processor).__name__}) does what hf_tl does not batch" in capsys.readouterr().out
    image = photo(375, 500, seed=3)
    ours = used(to_uint8(image)[None])
    assert torch.equal(ours, processor(images=[image], return_tensors="pt").pixel_values)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_images_reach_training_as_the_saved_processor_sees_them(mode):
    """transformers composites transparency onto white; training must too, or pipeline() disagrees with metrics."""
    rgba = photo(40, 30, seed=5).convert("RGBA")
    alpha = Image.fromarray((torch.arange(40 * 30).reshape(40, 30) % 3 == 0).byte().numpy() * 255)  # a third opaque
    rgba.putalpha(alpha)
    image = rgba.convert(mode) if mode != "P" else rgba.convert("P", palette=Image.Palette.ADAPTIVE)
    if mode == "P":
        image.info["transparency"] = 0
    preprocess = Preprocess((16, 16), "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    saved = processor_for(preprocess, ViTImageProcessor(), None)
    expected = saved(images=[image], return_tensors="pt").pixel_values
    assert (preprocess(to_uint8(image)[None]) - expected).abs().max().item() < 1e-5
