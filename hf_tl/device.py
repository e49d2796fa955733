"""The device policy, decided here and nowhere else: which device a command computes on, how many loader
processes decode images, whether batches are pinned, and when channels_last pays. Each reads one fact,
whether there is an accelerator, so a test fixes the machine by fixing `no_accelerator`."""

from __future__ import annotations

import os

import torch
from torch import nn

from hf_tl.errors import RecipeError


def no_accelerator() -> bool:
    return not torch.accelerator.is_available()


def loader_workers(requested: int | None) -> int:
    """Loader processes only decode images. A CPU run needs its cores for training; a GPU run hides decoding."""
    if requested is not None:
        return requested
    return 0 if no_accelerator() else min(8, (os.cpu_count() or 2) // 2)


def pin_memory() -> bool:
    """Pinned host batches copy to an accelerator asynchronously; with none, pinning only costs."""
    return not no_accelerator()


def use_channels_last(choice: str, model: nn.Module) -> bool:
    """channels_last speeds up convolutions on GPUs; 'auto' uses it there, for convolutional networks."""
    from hf_tl.models.families import convolutional

    return choice == "true" or (choice == "auto" and not no_accelerator() and convolutional(model))


def resolve_device(name: str | None) -> torch.device:
    """`device=` checked before any work: a device this machine has. Unset, the accelerator if there is one."""
    if not name:
        return default_device()
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise RecipeError(
            f"device='{name}' is not a device: give cpu, cuda, cuda:1, mps, ..., or leave device= out to use "
            f"{default_device()}."
        ) from None
    if device.type == "cpu":
        return device
    accelerator = default_device()
    count = torch.accelerator.device_count() if accelerator.type == device.type else 0
    if count == 0 or (device.index or 0) >= count:
        has = f"{count} {device.type} device(s), numbered from 0" if count else f"no {device.type} device"
        raise RecipeError(
            f"device='{name}': this machine has {has}. Leave device= out to use {accelerator}, or give device=cpu."
        )
    return device


def default_device() -> torch.device:
    """The accelerator when there is one, else the CPU."""
    return torch.device("cpu") if no_accelerator() else torch.accelerator.current_accelerator()
