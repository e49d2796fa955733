"""The device policy is decided in `hf_tl.device` alone: fixing its one fact fixes every decision."""

from __future__ import annotations

import pytest
import torch

from hf_tl import device
from hf_tl.config.recipe import load_recipe
from hf_tl.errors import RecipeError
from hf_tl.training.arguments import training_arguments


def test_without_an_accelerator_batches_are_decoded_in_process_and_not_pinned(machine_without_accelerator, tmp_path):
    assert device.loader_workers(None) == 0 and device.pin_memory() is False
    assert device.use_channels_last("auto", torch.nn.Conv2d(3, 3, 3)) is False
    args = training_arguments(load_recipe("quickstart", [f"output.dir={tmp_path}"]), tmp_path)
    assert args.dataloader_num_workers == 0 and args.dataloader_pin_memory is False and args.use_cpu is True


def test_with_an_accelerator_loaders_decode_in_workers_into_pinned_memory(machine_with_accelerator, tmp_path):
    assert device.loader_workers(None) >= 1 and device.pin_memory() is True
    assert device.loader_workers(3) == 3  # asked for: taken as given
    args = training_arguments(load_recipe("quickstart", [f"output.dir={tmp_path}"]), tmp_path)
    assert args.dataloader_num_workers >= 1 and args.dataloader_pin_memory is True and args.use_cpu is False


def test_a_device_this_machine_lacks_is_refused_with_the_fix(machine_without_accelerator):
    if torch.accelerator.is_available():
        pytest.skip("this machine has an accelerator; the refusal needs one without")
    with pytest.raises(RecipeError, match=r"device='cuda:1': this machine has no cuda device"):
        device.resolve_device("cuda:1")
    assert device.resolve_device(None) == torch.device("cpu") and device.resolve_device("cpu").type == "cpu"
