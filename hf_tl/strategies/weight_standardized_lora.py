"""LoRA for weight-standardised convolutions (BiT; timm's StdConv2d).

Such a layer standardises its kernel before convolving, so peft's usual LoRA, which adds
B(A(x)) beside the layer, trains a function that merging W + BA cannot reproduce: the sum is
standardised too. Here the adapter sits inside the standardisation, standardise(W + BA), so
the merged model computes exactly what was trained. peft's custom-module hook registers it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel
from peft.tuners.lora.layer import Conv2d as LoraConv2d
from timm.layers import StdConv2d, StdConv2dSame
from torch import nn
from torch.func import functional_call
from transformers.models.bit.modeling_bit import WeightStandardizedConv2d

STANDARDIZED_CONVS: tuple[type[nn.Module], ...] = (WeightStandardizedConv2d, StdConv2d, StdConv2dSame)


class WeightStandardizedLoraConv2d(LoraConv2d):
    """LoRA inside the standardisation. Dropout on the adapter's input does not apply here."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters or self.merged:
            return super().forward(x, *args, **kwargs)
        base = self.get_base_layer()
        weight = base.weight
        for adapter in self.active_adapters:
            if adapter in self.lora_A:
                weight = weight + self.get_delta_weight(adapter)
        return functional_call(base, {"weight": weight}, (x,))


def register(config: LoraConfig) -> LoraConfig:
    config._register_custom_module(dict.fromkeys(STANDARDIZED_CONVS, WeightStandardizedLoraConv2d))
    return config


def load_adapter(base_model: nn.Module, adapter_dir: str | Path) -> PeftModel:
    """Load an hf_tl LoRA adapter with peft; for standardised convolutions plain loading would use peft's layer."""
    config = register(LoraConfig.from_pretrained(str(adapter_dir)))
    return PeftModel.from_pretrained(base_model, str(adapter_dir), config=config)
