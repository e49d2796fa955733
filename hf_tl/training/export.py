"""The trained model as users load it: plain transformers, and the peft adapter where there is one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from peft import PeftModel
from transformers import Trainer

from hf_tl.models import mlp_head_code
from hf_tl.runs.folder import ADAPTER_DIR, MODEL_DIR, replaced_atomically, write_json

CODE_MODULE = "hf_tl_mlp_head"


def save_final_model(trainer: Trainer, run_dir: Path) -> None:
    """model/ loads with `AutoModelForImageClassification.from_pretrained`, adapters merged in."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if not trainer.is_world_process_zero():
        return
    processor = trainer.processing_class
    if isinstance(model, PeftModel):
        with replaced_atomically(run_dir / ADAPTER_DIR) as adapter_dir:
            model.save_pretrained(adapter_dir)
            processor.save_pretrained(adapter_dir)
        model = model.merge_and_unload(safe_merge=True)
    custom_head = bool(getattr(model.config, "hf_tl_mlp_heads", None))
    with replaced_atomically(run_dir / MODEL_DIR) as model_dir:
        # transformers renames pre-v5 keys only for its own classes, so a custom-code checkpoint keeps v5 names.
        state_dict = without_aliases(model.state_dict())
        model.save_pretrained(model_dir, state_dict=state_dict, save_original_format=not custom_head)
        processor.save_pretrained(model_dir)
        if custom_head:
            make_mlp_head_loadable(model_dir, type(model).__name__)


def without_aliases(state_dict: dict) -> dict:
    """Each name its own tensor: a tensor that shares memory with one named earlier is copied.

    Some timm models pass one module to several blocks (CoaT's convolutional position encoding), so their
    state dict names one tensor many times. safetensors cannot store aliases, and transformers 5's
    `save_pretrained` refuses any sharing a model class has not declared as tied, which the timm wrapper
    cannot declare for the timm model inside it. With a copy under every name the file is complete, and
    loading writes the same values into the one shared tensor.
    """
    seen: set[int] = set()
    unshared = {}
    for name, tensor in state_dict.items():
        if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
            storage = tensor.untyped_storage().data_ptr()
            if storage in seen:
                tensor = tensor.clone()
            seen.add(storage)
        unshared[name] = tensor
    return unshared


def make_mlp_head_loadable(model_dir: Path, architecture: str) -> None:
    """Ship the MLP-head classes with the checkpoint and point the Auto classes at them."""
    shutil.copyfile(mlp_head_code.__file__, model_dir / f"{CODE_MODULE}.py")
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text())
    config_class = getattr(mlp_head_code, f"MlpHead{architecture}").config_class.__name__
    config["model_type"] = mlp_head_code.MODEL_TYPE_PREFIX + config["model_type"]
    config["architectures"] = [f"MlpHead{architecture}"]
    if "pretrained_cfg" in config:  # timm: AutoImageProcessor cannot tell the processor from the prefixed model_type
        config["image_processor_type"] = "TimmWrapperImageProcessor"
    config["auto_map"] = {
        "AutoConfig": f"{CODE_MODULE}.{config_class}",
        "AutoModelForImageClassification": f"{CODE_MODULE}.MlpHead{architecture}",
    }
    write_json(config_path, config)
