"""What a run ran on: device and library versions, for metrics.json."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from accelerate import PartialState

LIBRARIES = ("hf-tl", "torch", "torchvision", "transformers", "accelerate", "datasets", "evaluate", "peft", "timm")


def process_state() -> PartialState:
    """Accelerate's process state; on a machine with no accelerator, several processes become gloo ranks.

    Accelerate only chooses MULTI_CPU when told the run is on the CPU: without `cpu=True`,
    `accelerate launch --multi_gpu --num_processes 2` would start two independent runs. Imported here, not at
    the top: the run folder's checks read this module and must not cost the import of torch.
    """
    from accelerate import PartialState

    from hf_tl.device import no_accelerator

    return PartialState(cpu=no_accelerator())


def device_info() -> dict:
    state = process_state()
    info = {
        "type": state.device.type,
        "num_processes": state.num_processes,
        "distributed_type": str(state.distributed_type.value),
    }
    if state.device.type == "cuda":
        import torch

        info["name"] = torch.cuda.get_device_name(state.device)
    return info


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions
