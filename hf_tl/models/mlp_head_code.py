"""MLP classification heads for transformers image classifiers (Malpure et al. 2021).

hf_tl copies this file into every checkpoint whose head is Linear(d, 256) -> ELU ->
Dropout(0.5) -> Linear(256, classes). transformers has no such head, so those checkpoints
load with `AutoModelForImageClassification.from_pretrained(path, trust_remote_code=True)`
through the classes below. Their `model_type` carries the prefix `hf_tl_mlp_`, so that
loading without `trust_remote_code` fails loudly instead of building a linear head and
silently dropping the trained one. This file imports only torch and transformers.
"""

import torch
import transformers
from torch import nn

MLP_HIDDEN = 256
MODEL_TYPE_PREFIX = "hf_tl_mlp_"
# The image classifiers of every model type hf_tl.models.families knows (a test checks both ways); a model of
# another class is refused model.head=mlp before training (hf_tl.models.loading.check_mlp_head_saves).
BASE_CLASSES = (
    "ViTForImageClassification",
    "DeiTForImageClassification",
    "DeiTForImageClassificationWithTeacher",
    "SwinForImageClassification",
    "ConvNextForImageClassification",
    "ResNetForImageClassification",
    "BitForImageClassification",
    "TimmWrapperForImageClassification",
)


def mlp_head(in_features: int, num_labels: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(in_features, MLP_HIDDEN), nn.ELU(), nn.Dropout(0.5), nn.Linear(MLP_HIDDEN, num_labels)
    )


def head_in_features(head: nn.Module, config) -> int:
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[0].in_features
    return getattr(config, "hidden_size", None) or config.hidden_sizes[-1]


def set_head(model: nn.Module, name: str, make_head) -> None:
    """Put `make_head(in_features)` where the head `name` was.

    A head that flattens first (ResNet, BiT: Sequential(Flatten, Linear)) keeps its Flatten,
    and its key names (`classifier.1.*`) stay those plain transformers expects.
    """
    parent, _, child = name.rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    old = getattr(owner, child)
    if isinstance(old, nn.Sequential) and len(old) > 1 and isinstance(old[0], nn.Flatten):
        old[-1] = make_head(head_in_features(old, model.config))
    elif isinstance(old, nn.Conv2d) and old.kernel_size == (1, 1):  # timm's ResNetV2 (BiT) classifies by 1x1 conv
        setattr(owner, child, pointwise(make_head(old.in_channels)))
    else:
        setattr(owner, child, make_head(head_in_features(old, model.config)))


def pointwise(head: nn.Module) -> nn.Module:
    """The same head with each Linear as the equivalent 1x1 convolution, for a head fed (B, C, 1, 1) maps.

    Keeping the conv form keeps the checkpoint's shapes, so plain transformers reloads it.
    """
    if isinstance(head, nn.Linear):
        conv = nn.Conv2d(head.in_features, head.out_features, 1, bias=head.bias is not None)
        with torch.no_grad():
            conv.weight.copy_(head.weight[:, :, None, None])
            if head.bias is not None:
                conv.bias.copy_(head.bias)
        return conv
    for child_name, child in head.named_children():
        setattr(head, child_name, pointwise(child))
    return head


def _config_class(base):
    return type(f"MlpHead{base.__name__}", (base,), {"model_type": MODEL_TYPE_PREFIX + base.model_type})


def _model_class(base, config_class):
    def __init__(self, config):
        base.__init__(self, config)
        for name in config.hf_tl_mlp_heads:
            set_head(self, name, lambda in_features: mlp_head(in_features, config.num_labels))
        self.post_init()

    return type(f"MlpHead{base.__name__}", (base,), {"__init__": __init__, "config_class": config_class})


for _name in BASE_CLASSES:
    _base = getattr(transformers, _name)
    _config_name = f"MlpHead{_base.config_class.__name__}"
    if _config_name not in globals():
        globals()[_config_name] = _config_class(_base.config_class)
    globals()[f"MlpHead{_name}"] = _model_class(_base, globals()[_config_name])
