"""The trained model as users load it: plain transformers, and the peft adapter where there is one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from peft import PeftModel
from transformers import Trainer

from hf_tl import mlp_head_code
from hf_tl.rundir import write_json

MODEL_DIR = "model"
ADAPTER_DIR = "adapter"
CODE_MODULE = "hf_tl_mlp_head"


def save_final_model(trainer: Trainer, run_dir: Path) -> None:
    """model/ loads with `AutoModelForImageClassification.from_pretrained`, adapters merged in."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if not trainer.is_world_process_zero():
        return
    processor = trainer.processing_class
    if isinstance(model, PeftModel):
        model.save_pretrained(run_dir / ADAPTER_DIR)
        processor.save_pretrained(run_dir / ADAPTER_DIR)
        model = model.merge_and_unload(safe_merge=True)
    custom_head = bool(getattr(model.config, "hf_tl_mlp_heads", None))
    # transformers renames pre-v5 keys only for its own classes, so a custom-code checkpoint keeps v5 names.
    model.save_pretrained(run_dir / MODEL_DIR, save_original_format=not custom_head)
    processor.save_pretrained(run_dir / MODEL_DIR)
    if custom_head:
        make_mlp_head_loadable(run_dir / MODEL_DIR, type(model).__name__)


def make_mlp_head_loadable(model_dir: Path, architecture: str) -> None:
    """Ship the MLP-head classes with the checkpoint and point the Auto classes at them."""
    shutil.copyfile(mlp_head_code.__file__, model_dir / f"{CODE_MODULE}.py")
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text())
    config_class = getattr(mlp_head_code, f"MlpHead{architecture}").config_class.__name__
    config["model_type"] = mlp_head_code.MODEL_TYPE_PREFIX + config["model_type"]
    config["architectures"] = [f"MlpHead{architecture}"]
    config["auto_map"] = {
        "AutoConfig": f"{CODE_MODULE}.{config_class}",
        "AutoModelForImageClassification": f"{CODE_MODULE}.MlpHead{architecture}",
    }
    write_json(config_path, config)
