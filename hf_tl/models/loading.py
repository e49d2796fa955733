"""Load a backbone and its image processor, and give it a fresh head for the dataset's classes."""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import constants, try_to_load_from_cache
from safetensors import SafetensorError
from torch import nn
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, PreTrainedModel

from hf_tl import progress
from hf_tl.config.recipe import ModelSection
from hf_tl.errors import HfTlError, brief, warn
from hf_tl.models.families import family_of, layout
from hf_tl.models.mlp_head_code import BASE_CLASSES, mlp_head, set_head
from hf_tl.models.source import check_model_source


def load_backbone(cfg: ModelSection, labels: list[str]) -> tuple[PreTrainedModel, object]:
    """The model with new head(s) for `labels`, and the image processor it was trained with."""
    model = load_model(cfg)
    replace_heads(model, labels, cfg.head)
    return model, load_processor(cfg)


def load_model(cfg: ModelSection) -> PreTrainedModel:
    check_model_source(cfg.name)
    kwargs = _hub_kwargs(cfg)
    try:
        if cfg.weights == "none":
            config = AutoConfig.from_pretrained(cfg.name, **kwargs)
            return AutoModelForImageClassification.from_config(config, trust_remote_code=cfg.trust_remote_code)
        with progress.transformers_bars_off():  # no "Loading weights" bar; a download's bar shows as before
            return AutoModelForImageClassification.from_pretrained(cfg.name, **kwargs, **_weights_format(cfg))
    except ValueError as e:
        if "trust_remote_code" in str(e) or "custom code" in str(e):
            raise HfTlError(
                f"'{cfg.name}' ships its own model code (an hf_tl MLP head, or another custom class). Read it, and "
                "if you trust its source, set trust_remote_code=true (model.trust_remote_code=true in a recipe)."
            ) from None
        raise HfTlError(f"could not load model '{cfg.name}': {brief(e)}") from None
    except SafetensorError as e:
        raise HfTlError(
            f"could not load model '{cfg.name}': its weights cannot be read ({brief(e)}). Its .safetensors file is "
            "damaged or incomplete, as a copy or download cut short leaves it: copy or download the checkpoint again."
        ) from None
    except OSError as e:
        if not cfg.allow_pickle and _has_only_pickle_weights(cfg):
            raise HfTlError(
                f"'{cfg.name}' has no safetensors weights, only pickle ones (.bin), which can run arbitrary code "
                "when loaded. If you trust its source, set model.allow_pickle=true."
            ) from None
        raise HfTlError(_unreachable(cfg.name, e)) from None


def _has_only_pickle_weights(cfg: ModelSection) -> bool:
    """Pickle weights seen in the local folder or the HF cache (nothing is fetched)."""
    path = Path(cfg.name).expanduser()
    if path.is_dir():
        return any(path.glob("*.bin")) and not any(path.glob("*.safetensors"))
    try:
        cached = try_to_load_from_cache(cfg.name, "pytorch_model.bin", revision=cfg.revision)
    except ValueError:  # not a Hub id either (huggingface_hub's HFValidationError)
        return False
    return isinstance(cached, str)


def _weights_format(cfg: ModelSection) -> dict:
    """safetensors only, unless the recipe accepts pickle."""
    if cfg.allow_pickle:
        warn(f"model.allow_pickle=true: {cfg.name} may load pickle weights, which can run code.")
        return {}
    return {"use_safetensors": True}


def load_processor(cfg: ModelSection) -> object:
    check_model_source(cfg.name)
    try:
        return AutoImageProcessor.from_pretrained(cfg.name, **_hub_kwargs(cfg))
    except OSError as e:
        raise HfTlError(_unreachable(cfg.name, e)) from None


def build_head(in_features: int, num_labels: int, kind: str) -> nn.Module:
    """`linear`, or Malpure et al. 2021's MLP head."""
    return nn.Linear(in_features, num_labels) if kind == "linear" else mlp_head(in_features, num_labels)


def replace_heads(model: PreTrainedModel, labels: list[str], kind: str) -> None:
    """Always a fresh head: a pretrained one of the same size would keep another task's meaning."""
    heads = layout(model).heads
    if kind == "mlp":
        check_mlp_head_saves(model)

    def fresh_head(in_features: int) -> nn.Module:
        head = build_head(in_features, len(labels), kind)
        head.apply(model._init_weights)
        return head

    for name in heads:
        set_head(model, name, fresh_head)
    model.config.num_labels = len(labels)
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {label: i for i, label in enumerate(labels)}
    if hasattr(model.config, "label_names"):  # timm wrapper: config.json stores the names here, and keeps stale ones
        model.config.label_names = list(labels)
    model.config.hf_tl_mlp_heads = heads if kind == "mlp" else []


def check_mlp_head_saves(model: PreTrainedModel) -> None:
    """An MLP head saves only through a class of mlp_head_code: refuse the others now, not after training."""
    architecture = type(model).__name__
    if architecture not in BASE_CLASSES:
        raise HfTlError(
            f"model.head=mlp cannot be saved for family '{family_of(model)}' ({architecture}): the MLP-head code "
            f"shipped with checkpoints has classes only for {', '.join(BASE_CLASSES)}. Use model.head=linear, or "
            "add the class to BASE_CLASSES in hf_tl/models/mlp_head_code.py."
        )


def warn_remote_code(name: str) -> None:
    """Said once, before the code runs: by the command that is asked to trust it, or by the loader."""
    warn(f"trust_remote_code=true runs the Python code shipped with {name}; use it only for checkpoints from sources "
         "you trust.")  # fmt: skip


def _hub_kwargs(cfg: ModelSection) -> dict:
    if cfg.trust_remote_code:
        warn_remote_code(cfg.name)
    return {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}


def _unreachable(name: str, error: Exception) -> str:
    status = _http_status(error)
    if status in (401, 403, 404):  # the Hub answers 401 to a request without a token for a repository it hides
        return (
            f"the Hub refused model '{name}' (HTTP {status}): there is no such repository, or it is private or gated "
            f"and {_token_source()} cannot read it. Check the name; for a private or gated model set HF_TOKEN to a "
            "token that can read it (https://huggingface.co/settings/tokens) or run `hf auth login`; or pass a local "
            "directory as model.name=/path/to/checkpoint."
        )
    return (
        f"could not load model '{name}': {brief(error)}\n"
        "  If this is a Hub id, the Hub may be unreachable: download it where there is network, "
        "or pass a local directory as model.name=/path/to/checkpoint (set HF_HUB_OFFLINE=1 to use only the cache)."
    )


def _http_status(error: BaseException | None) -> int | None:
    """The HTTP status of the Hub's answer behind `error` (transformers wraps huggingface_hub's errors)."""
    while error is not None:
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status:
            return status
        error = error.__cause__ or error.__context__
    return None


def _token_source() -> str:
    """Which token the request carried (looked up as stored: get_token() may reach the network)."""
    if os.environ.get("HF_TOKEN"):
        return "the token in HF_TOKEN"
    has_login = Path(constants.HF_TOKEN_PATH).is_file()
    return "the token of the login cache (`hf auth login`)" if has_login else "a request without a token"
