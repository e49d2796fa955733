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
MODULE_WRAPPERS = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module")  # torch's attribute names


def save_final_model(trainer: Trainer, run_dir: Path) -> None:
    """model/ loads with `AutoModelForImageClassification.from_pretrained`, adapters merged in.

    Every rank calls this: the whole state dict is gathered first, as the Trainer's own save_model gathers it
    (under FSDP or DeepSpeed ZeRO-3 each rank holds only shards, and gathering them is a collective), and the
    main process writes it.
    """
    state_dict = gathered_state_dict(trainer)
    model = trainer.accelerator.unwrap_model(trainer.model)
    if not trainer.is_world_process_zero():
        return
    processor = trainer.processing_class
    if isinstance(model, PeftModel):
        with replaced_atomically(run_dir / ADAPTER_DIR) as adapter_dir:
            model.save_pretrained(adapter_dir, state_dict=state_dict)
            processor.save_pretrained(adapter_dir)
        holding_whole_weights(model, state_dict)
        model = model.merge_and_unload(safe_merge=True)
        state_dict = model.state_dict()
    custom_head = bool(getattr(model.config, "hf_tl_mlp_heads", None))
    with replaced_atomically(run_dir / MODEL_DIR) as model_dir:
        # transformers renames pre-v5 keys only for its own classes, so a custom-code checkpoint keeps v5 names.
        state_dict = without_aliases(state_dict)
        model.save_pretrained(model_dir, state_dict=state_dict, save_original_format=not custom_head)
        processor.save_pretrained(model_dir)
        if custom_head:
            make_mlp_head_loadable(model_dir, type(model).__name__)


def gathered_state_dict(trainer: Trainer) -> dict:
    """The model's whole state dict, through accelerate's gathering path, as `Trainer.save_model` takes it: from
    the DeepSpeed engine under DeepSpeed, else from the (possibly FSDP-wrapped) model. A collective under FSDP and
    ZeRO-3, so every rank must call it; ranks other than the main one may get an empty dict. Without sharding it is
    the unwrapped model's own state dict, its own tensors."""
    wrapped = trainer.deepspeed if getattr(trainer, "is_deepspeed_enabled", False) else trainer.model
    return trainer.accelerator.get_state_dict(wrapped)


def holding_whole_weights(model: torch.nn.Module, state_dict: dict) -> None:
    """Put the gathered weights into `model` where they are not its own tensors already.

    Under FSDP or ZeRO-3 the unwrapped model's parameters are shards (or empty), so LoRA cannot be merged into
    them: FSDP's per-block wrappers are taken out, and the gathered tensors take the parameters' places by name.
    Without sharding the state dict holds the model's own tensors, and nothing changes.
    """
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    own = {name: tensor.data_ptr() for name, tensor in named}
    if all(own.get(name) == tensor.data_ptr() for name, tensor in state_dict.items()):
        return
    _take_out_wrappers(model)
    for name, tensor in state_dict.items():
        owner_name, _, leaf = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        if leaf in dict(owner.named_buffers(recurse=False)):
            setattr(owner, leaf, tensor)
        else:
            setattr(owner, leaf, torch.nn.Parameter(tensor, requires_grad=False))


def _take_out_wrappers(module: torch.nn.Module) -> None:
    """Each FSDP (version 1) or activation-checkpoint wrapper inside `module` replaced by the module it wraps, so
    that the model's names are the state dict's, and no wrapper's state-dict hook runs a collective on one rank."""
    for name, child in list(module.named_children()):
        inner = child
        while wrapper := next((w for w in MODULE_WRAPPERS if hasattr(inner, w)), None):
            inner = getattr(inner, wrapper)
        if inner is not child:
            setattr(module, name, inner)
        _take_out_wrappers(inner)


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
