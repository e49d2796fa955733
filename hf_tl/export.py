"""The trained model as users load it: plain transformers, and the peft adapter where there is one."""

from __future__ import annotations

from pathlib import Path

from peft import PeftModel
from transformers import Trainer

MODEL_DIR = "model"
ADAPTER_DIR = "adapter"


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
        trainer.model = model
    model.save_pretrained(run_dir / MODEL_DIR)
    processor.save_pretrained(run_dir / MODEL_DIR)
