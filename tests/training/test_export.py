"""The final export takes the model's weights through accelerate's gathering path (`Accelerator.get_state_dict`).

Under FSDP or DeepSpeed ZeRO-3 each rank's unwrapped model holds shards or empty tensors, and only the
gathered state dict is whole. A CPU cannot run either, so a test here leaves the model as ZeRO-3 leaves it (each
parameter an empty tensor, the whole weights only in what gathering returns): the export must still write the
trained weights. What only GPUs can show (the collective itself, FSDP's wrappers, 16-bit gathering)
is not tested here.
"""

from __future__ import annotations

import pytest
import torch
from conftest import saved_digits
from transformers import AutoModelForImageClassification

from hf_tl.config.recipe import load_recipe
from hf_tl.runs.folder import ADAPTER_DIR, MODEL_DIR
from hf_tl.strategies.weight_standardized_lora import load_adapter
from hf_tl.training.export import save_final_model
from hf_tl.training.run import build_trainer


@pytest.fixture(scope="module")
def few_digits(tmp_path_factory):
    return saved_digits(tmp_path_factory.mktemp("few-digits"), per_class=6)


def trained(tiny_vit, data, run_dir, strategy: str):
    recipe = load_recipe(
        "quickstart",
        [
            f"model.name={tiny_vit}",
            f"data.dataset={data}",
            "training.max_steps=2",
            "training.batch_size=8",
            "training.lr=1e-2",
            f"strategy.kind={strategy}",
            f"output.dir={run_dir}",
        ],
    )
    trainer, *_ = build_trainer(recipe, run_dir)
    trainer.train()
    return trainer


def logits(model, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(pixel_values=pixels).logits


def record_gathering(trainer, monkeypatch) -> list:
    """accelerate's own get_state_dict, called through, each call recorded."""
    calls = []
    real = trainer.accelerator.get_state_dict

    def get_state_dict(model, unwrap=True):
        calls.append(model)
        return real(model, unwrap)

    monkeypatch.setattr(trainer.accelerator, "get_state_dict", get_state_dict)
    return calls


def leave_in_shards(trainer, monkeypatch) -> None:
    """The model as ZeRO-3 leaves it on every rank after training: each parameter of the unwrapped model an empty
    tensor, the whole weights had only by gathering, as copies (taken here with accelerate's own get_state_dict
    before the parameters are emptied)."""
    whole = {name: tensor.clone() for name, tensor in trainer.accelerator.get_state_dict(trainer.model).items()}
    for parameter in trainer.accelerator.unwrap_model(trainer.model).parameters():
        parameter.data = torch.empty(0, dtype=parameter.dtype)
    monkeypatch.setattr(trainer.accelerator, "get_state_dict", lambda model, unwrap=True: whole)


@pytest.mark.parametrize("strategy", ["last_block", "lora"])
def test_the_export_asks_accelerate_for_the_state_dict(strategy, tiny_vit, few_digits, tmp_path, monkeypatch):
    trainer = trained(tiny_vit, few_digits, tmp_path, strategy)
    pixels = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    in_memory = logits(trainer.model, pixels)
    calls = record_gathering(trainer, monkeypatch)
    save_final_model(trainer, tmp_path)
    assert calls == [trainer.model]  # once, on the model the Trainer trained, as Trainer.save_model asks
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / MODEL_DIR)
    torch.testing.assert_close(logits(reloaded, pixels), in_memory, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_a_model_left_in_shards_is_saved_whole_from_the_gathered_weights(
    strategy, tiny_vit, few_digits, tmp_path, monkeypatch
):
    trainer = trained(tiny_vit, few_digits, tmp_path, strategy)
    pixels = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    in_memory = logits(trainer.model, pixels)
    leave_in_shards(trainer, monkeypatch)
    save_final_model(trainer, tmp_path)
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / MODEL_DIR)
    assert all(p.numel() > 0 for p in reloaded.parameters())
    torch.testing.assert_close(logits(reloaded, pixels), in_memory, atol=1e-5, rtol=1e-4)  # LoRA merged in
    if strategy == "lora":
        base = AutoModelForImageClassification.from_pretrained(
            tiny_vit, num_labels=5, id2label=reloaded.config.id2label, ignore_mismatched_sizes=True
        )
        adapted = load_adapter(base, tmp_path / ADAPTER_DIR)
        torch.testing.assert_close(logits(adapted, pixels), in_memory, atol=1e-5, rtol=1e-4)
