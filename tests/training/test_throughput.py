"""The throughput switches reach the model, the optimizer and the data loader."""

from __future__ import annotations

import torch

from hf_tl.config.recipe import load_recipe
from hf_tl.models.loading import load_backbone
from hf_tl.training.arguments import training_arguments
from hf_tl.training.run import build_trainer
from hf_tl.training.trainer import use_channels_last


def recipe(model_dir, data_dir, out, *overrides):
    return load_recipe(
        "quickstart",
        [
            f"model.name={model_dir}",
            f"data.dataset={data_dir}",
            f"output.dir={out}",
            "training.batch_size=8",
            *overrides,
        ],
    )


def test_attention_runs_through_sdpa(tiny_vit, digits_dir, tmp_path):
    model, _ = load_backbone(recipe(tiny_vit, digits_dir, tmp_path).model, ["a", "b"])
    assert model.config._attn_implementation == "sdpa"


def test_fused_adamw_is_the_default(tiny_vit, digits_dir, tmp_path):
    one_step = ("training.max_steps=1", "training.warmup_ratio=0")  # one warm-up step would train nothing
    trainer, *_ = build_trainer(recipe(tiny_vit, digits_dir, tmp_path, *one_step), tmp_path)
    trainer.train()
    assert trainer.args.optim == "adamw_torch_fused"
    assert all(group["fused"] for group in trainer.optimizer.param_groups)


def test_channels_last_on_request_reaches_model_and_pixels(tiny_resnet, digits_dir, tmp_path):
    r = recipe(tiny_resnet, digits_dir, tmp_path, "training.channels_last=true", "training.cache_features=false")
    trainer, *_ = build_trainer(r, tmp_path)
    conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    assert batch["pixel_values"].is_contiguous(memory_format=torch.channels_last)
    trainer.args.max_steps = 2
    trainer.train()  # and it trains


def test_channels_last_auto_only_for_cnns_on_an_accelerator(
    tiny_resnet, tiny_vit, digits_dir, tmp_path, machine_without_accelerator
):
    for model_dir in (tiny_resnet, tiny_vit):
        r = recipe(model_dir, digits_dir, tmp_path)
        model, _ = load_backbone(r.model, ["a", "b"])
        assert use_channels_last(r, model) is False  # no accelerator
    r = recipe(tiny_vit, digits_dir, tmp_path, "training.channels_last=true")
    assert use_channels_last(r, load_backbone(r.model, ["a", "b"])[0]) is True


def test_compile_and_loader_workers_reach_the_training_arguments(
    tiny_vit, digits_dir, tmp_path, machine_without_accelerator
):
    args = training_arguments(recipe(tiny_vit, digits_dir, tmp_path, "training.compile=true"), tmp_path)
    assert args.torch_compile is True
    assert args.dataloader_num_workers == 0  # auto on a CPU: the cores are busy training
    args = training_arguments(recipe(tiny_vit, digits_dir, tmp_path, "data.num_workers=3"), tmp_path)
    assert args.dataloader_num_workers == 3 and args.dataloader_persistent_workers is True
