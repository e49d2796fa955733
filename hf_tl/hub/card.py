"""The model card of a run folder: README.md, rendered from `model_cards/` through huggingface_hub.ModelCard.

Everything on the card comes from the run folder's own files (recipe.yaml, metrics.json,
model/config.json, log_history.json), so a folder renders the same card wherever it lies.
ModelCardData writes the YAML header; text that came from data (dataset and label names,
recipe values) is escaped before it reaches the Markdown body, so it cannot start a table
row, a link, HTML or a formula there.
"""

from __future__ import annotations

import html
import json
import re
import shlex
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData, try_to_load_from_cache
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from hf_tl.config.resources import model_card_template
from hf_tl.data.datasets import VALIDATION, is_held_out
from hf_tl.errors import HfTlError
from hf_tl.hub.plots import CURVES_FILE, training_curves
from hf_tl.models.families import family_of
from hf_tl.runs.folder import CARD_FILE, LOG_HISTORY_FILE, METRICS_FILE, MODEL_DIR, RECIPE_FILE, write_text
from hf_tl.strategies.registry import STRATEGIES

TASK = "image-classification"
# metrics.json key -> the Hub's metric type, its display name, its arguments
HUB_METRICS = {
    "accuracy": ("accuracy", "Accuracy", None),
    "top5_accuracy": ("top_5_accuracy", "Top-5 accuracy", None),
    "macro_f1": ("f1", "Macro F1", {"average": "macro"}),
}
STRATEGY_TEXT = {name: strategy.card_text for name, strategy in STRATEGIES.items()}
HEAD_TEXT = {
    "linear": "a new linear layer",
    "mlp": "a new MLP, Linear(d, 256) - ELU - Dropout(0.5) - Linear(256, classes) (Malpure et al. 2021); its code "
    "ships in this repository (`hf_tl_mlp_head.py`), so it loads with `trust_remote_code=True`",
}
SHOWN_MODULES = 12
_MARKDOWN = re.compile(r"([\\`*_\[\]|~$])")
_PLAIN_NAME = re.compile(r"[\w.\-/:]*")


def write_run_card(run_dir: Path) -> Path:
    """The training-curve PNG and README.md, at the end of every run, so the folder is ready to push as it is."""
    run_dir = Path(run_dir)
    history = _read_json(run_dir / LOG_HISTORY_FILE, default=[])
    training_curves(history, run_dir / CURVES_FILE, title=run_dir.name)
    return write_card(run_dir)


def write_card(run_dir: Path, repo_id: str | None = None) -> Path:
    """Render the card and write it as the run folder's README.md."""
    path = Path(run_dir) / CARD_FILE
    write_text(path, str(render_card(run_dir, repo_id)))
    return path


def render_card(run_dir: Path, repo_id: str | None = None) -> ModelCard:
    """The card of a finished run; `repo_id` (default: the recipe's hub.repo_id) names it in the commands."""
    run_dir = Path(run_dir)
    recipe = _read_yaml(run_dir / RECIPE_FILE)
    metrics = _read_json(run_dir / METRICS_FILE)
    config = _read_json(run_dir / MODEL_DIR / "config.json", default={})
    history = _read_json(run_dir / LOG_HISTORY_FILE, default=[])
    repo_id = repo_id or recipe.get("hub", {}).get("repo_id")
    model, data, strategy = recipe["model"], recipe["data"], recipe["strategy"]
    params = metrics["parameters"]
    kind = params["kind"]
    title = repo_id.split("/")[-1] if repo_id else run_dir.name
    card_data = ModelCardData(
        model_name=title,
        base_model=model["name"] if is_hub_id(model["name"]) else None,
        datasets=[metrics["dataset"]] if is_hub_id(metrics["dataset"]) else None,
        license=_base_license(model["name"], model.get("revision")) or "unknown",
        library_name="transformers",
        pipeline_tag=TASK,
        tags=["hf_tl", kind, *_family_tags(config)],
        eval_results=eval_results(metrics, data.get("config_name"), data.get("revision")),
    )
    mlp = model.get("head") == "mlp"
    ref = repo_id or "path/to/this/repository"
    context = {
        "title": esc(title),
        "base_text": _base_text(model["name"], model.get("revision")),
        "dataset_text": _dataset_text(metrics["dataset"], data.get("config_name"), data.get("revision")),
        "eval_text": f"the split {esc(metrics['eval_split'])}",
        "num_classes": len(metrics["eval"]["per_class_accuracy"]),
        "num_train": f"{metrics['num_train_examples']:,}",
        "num_eval": f"{metrics['num_eval_examples']:,}",
        "strategy": esc(kind),
        "strategy_code": _code(kind),
        "strategy_text": STRATEGY_TEXT.get(kind, "").format(**strategy),
        "results": _result_rows(metrics),
        "curves": CURVES_FILE if (run_dir / CURVES_FILE).exists() else None,
        "recipe_name": _code(str(metrics.get("recipe") or recipe.get("name", ""))),
        "trainable": f"{params['trainable']:,}",
        "total": f"{params['total']:,}",
        "trainable_share": f"{params['trainable'] / params['total']:.2%}" if params["total"] else "n/a",
        "trainable_backbone": f"{params['trainable_backbone']:,}",
        "trainable_head": f"{params['trainable_head']:,}",
        "trains": _modules_text(params["trainable_modules"]),
        "head_text": HEAD_TEXT.get(model.get("head"), esc(model.get("head"))),
        "device": _device_text(metrics.get("device", {})),
        "epochs_completed": _number(metrics.get("epochs_completed"), ".4g"),
        # per-epoch sums: right after a resume too, when the wall clock saw only the last stretch
        "train_wall": f"{sum(metrics.get('timings', {}).get('train_seconds_per_epoch', [])):.1f} s",
        "hyper_parameters": _hyper_parameter_rows(recipe, metrics.get("preprocessing")),
        "per_step": _evaluates_per_step(recipe),
        "epochs": _evaluation_rows(recipe, metrics.get("timings", {}), history),
        "per_class": _per_class_rows(metrics),
        "reproduce": _reproduce(repo_id, metrics.get("device", {}).get("num_processes", 1)),
        "local_sources": ", ".join(
            f"`{key}`"
            for key, value in (("model.name", model["name"]), ("data.dataset", data["dataset"]))
            if not is_hub_id(value)
        ),
        "usage": _usage(ref, mlp),
        "model_ref": ref,
        "trust_flag": " trust_remote_code=true" if mlp else "",
        "eval_args": _eval_args(metrics, data.get("config_name")),
        "versions": esc(", ".join(f"{k} {v}" for k, v in metrics.get("versions", {}).items())),
    }
    return ModelCard.from_template(card_data, template_path=str(model_card_template()), **context)


def eval_results(metrics: dict, config_name: str | None = None, revision: str | None = None) -> list[EvalResult]:
    """model-index results: the validation metrics of metrics.json under the Hub's metric names. A local dataset
    is named by its folder's name alone: a path of the machine that trained is of no use on the Hub, and private."""
    dataset = metrics["dataset"] if is_hub_id(metrics["dataset"]) else local_name(metrics["dataset"])
    results = []
    for key, (metric_type, metric_name, args) in HUB_METRICS.items():
        value = metrics["eval"].get(key)
        if value is None:
            continue
        results.append(
            EvalResult(
                task_type=TASK,
                task_name="Image Classification",
                dataset_type=dataset,
                dataset_name=dataset,
                dataset_config=config_name,
                dataset_revision=revision,
                dataset_split=metrics["eval_split"],
                metric_type=metric_type,
                metric_name=metric_name,
                metric_args=args,
                metric_value=value,
            )
        )
    return results


def recorded_results(card: ModelCard) -> list[dict[str, Any]]:
    """The model-index results of a card, metrics named as metrics.json names them (accuracy, macro_f1, ...).
    `local`: the dataset is not on the Hub (the card's `datasets` does not list it), and is named by its folder."""
    names = {(t, json.dumps(a, sort_keys=True)): key for key, (t, _, a) in HUB_METRICS.items()}
    listed = getattr(card.data, "datasets", None) or []
    on_hub = {listed} if isinstance(listed, str) else set(listed)
    results = []
    for result in getattr(card.data, "eval_results", None) or []:
        args = json.dumps(result.metric_args, sort_keys=True)
        results.append(
            {
                "dataset": result.dataset_type,
                "local": result.dataset_type not in on_hub,
                "config": result.dataset_config,
                "split": result.dataset_split,
                "metric": names.get((result.metric_type, args), result.metric_type),
                "value": result.metric_value,
            }
        )
    return results


def load_card(path: Path) -> ModelCard | None:
    """A README.md parsed as a model card; None when there is none or it does not parse."""
    path = Path(path)
    if path.is_dir():
        path = path / CARD_FILE
    if not path.is_file():
        return None
    try:
        return ModelCard.load(path)
    except Exception:  # a README that is not a card (bad YAML header, ...) is no card
        return None


def local_name(path: str) -> str:
    """A local dataset or checkpoint as a card names it: its folder's name, never the path to it."""
    return Path(path).expanduser().name or str(path)


def is_hub_id(name: str | None) -> bool:
    """Whether `name` reads as a Hub repository id rather than a local path."""
    if not name or name.startswith((".", "/", "~")) or Path(name).expanduser().exists():
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def esc(text: Any) -> str:
    """Text from data, safe inside a Markdown line or table cell: one line, no HTML, no Markdown syntax."""
    one_line = " ".join(str(text).split())
    return _MARKDOWN.sub(r"\\\1", html.escape(one_line, quote=False))


def _code(name: str) -> str:
    return f"`{name}`" if _PLAIN_NAME.fullmatch(name) else esc(name)


def _number(value: Any, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec) if isinstance(value, (int, float)) else esc(value)


def _family_tags(config: dict) -> list[str]:
    if "model_type" not in config:
        return []
    family = family_of(SimpleNamespace(config=SimpleNamespace(**config)))
    return family.split(":")  # timm:densenet121 -> timm, densenet121


def _base_text(name: str, revision: str | None) -> str:
    at = f" (revision {esc(revision)})" if revision else ""
    if is_hub_id(name):
        return f"[{esc(name)}](https://huggingface.co/{name}){at}"
    return f"The local checkpoint {esc(local_name(name))} (a local folder){at}"


def _dataset_text(dataset: str, config_name: str | None, revision: str | None = None) -> str:
    config = f" (configuration {esc(config_name)})" if config_name else ""
    if is_hub_id(dataset):
        at = f" (revision {esc(revision)})" if revision else ""
        return f"[{esc(dataset)}](https://huggingface.co/datasets/{dataset}){config}{at}"
    return f"the local dataset {esc(local_name(dataset))} (a local folder){config}"


def _base_license(name: str, revision: str | None) -> str | None:
    """The base model's license where its card is at hand (a local folder or the HF cache); no network."""
    path = Path(name).expanduser()
    if path.is_dir():
        card = load_card(path)
    elif is_hub_id(name):
        cached = try_to_load_from_cache(name, CARD_FILE, revision=revision)
        card = load_card(Path(cached)) if isinstance(cached, str) else None
    else:
        card = None
    license_ = getattr(card.data, "license", None) if card else None
    return license_ if isinstance(license_, str) else None


def _result_rows(metrics: dict) -> list[dict]:
    rows = []
    train = metrics["train"] or {}  # None: training.train_metrics=false
    for key, (_, name, _) in HUB_METRICS.items():
        if key in metrics["eval"]:
            rows.append({"name": name, "eval": _number(metrics["eval"][key]), "train": _number(train.get(key))})
    rows.append({"name": "Loss", "eval": _number(metrics["eval"].get("loss")), "train": _number(train.get("loss"))})
    return rows


def _modules_text(modules: list[str]) -> str:
    if modules == [""]:
        return "the whole model"
    shown = ", ".join(_code(m) for m in modules[:SHOWN_MODULES]) or "nothing"
    hidden = len(modules) - SHOWN_MODULES
    return shown + (f" and {hidden} more (metrics.json lists them all)" if hidden > 0 else "")


def _device_text(device: dict) -> str:
    name = f" ({esc(device['name'])})" if device.get("name") else ""
    count = device.get("num_processes", 1)
    return f"{esc(device.get('type', 'unknown'))}{name}, {count} process{'es' if count != 1 else ''}"


def _hyper_parameter_rows(recipe: dict, preprocessing: dict | None = None) -> list[dict]:
    """The recipe's keys that shape the result; data.resize=auto shows what it chose (metrics.json's preprocessing)."""
    keys = [("model", k) for k in ("weights", "head", "revision")]
    keys += [("strategy", k) for k in recipe.get("strategy", {})]
    keys += [("training", k) for k in recipe.get("training", {}) if k != "resume"]
    keys += [
        ("data", k)
        for k in ("revision", "train_split", "eval_split", "val_fraction", "max_train_samples", "max_eval_samples")
        + ("resize", "interpolation", "augment")
    ]
    rows = []
    for section, key in keys:
        if key not in recipe.get(section, {}):
            continue
        value = recipe[section][key]
        if (section, key) == ("data", "resize") and value == "auto" and preprocessing:
            value = f"auto: {preprocessing['resize']}"
        shown = json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None else value
        rows.append({"key": f"{section}.{key}", "value": esc(shown)})
    return rows


def _evaluates_per_step(recipe: dict) -> bool:
    args = (recipe.get("training") or {}).get("args") or {}
    return str(args.get("eval_strategy", "epoch")) == "steps"


def _evaluation_rows(recipe: dict, timings: dict, history: list[dict]) -> list[dict]:
    """The card's table: a row per epoch, or under eval_strategy=steps a row per evaluation (an epoch has several, or
    none), since pairing evaluation i with epoch i's seconds would mix evaluations and epochs."""
    return _step_rows(history) if _evaluates_per_step(recipe) else _epoch_rows(timings, history)


def _step_rows(history: list[dict]) -> list[dict]:
    """Each evaluation during training: its step and epoch, the last training loss logged since the previous
    evaluation (as the epoch table's), its validation loss and accuracy."""
    rows, previous = [], 0
    for at in (h for h in history if "eval_accuracy" in h):
        logged = [h["loss"] for h in history if "loss" in h and previous < h.get("step", 0) <= at["step"]]
        rows.append(
            {
                "step": at["step"],
                "epoch": _number(round(at["epoch"], 2), "g"),
                "train_loss": _number(logged[-1] if logged else None),
                "eval_loss": _number(at.get("eval_loss")),
                "eval_accuracy": _number(at.get("eval_accuracy")),
            }
        )
        previous = at["step"]
    return rows


def _epoch_rows(timings: dict, history: list[dict]) -> list[dict]:
    train_s = timings.get("train_seconds_per_epoch", [])
    eval_s = timings.get("eval_seconds_per_epoch", [])
    evals = [h for h in history if "eval_accuracy" in h]
    losses = [h for h in history if "loss" in h and "epoch" in h]
    rows = []
    for i in range(max(len(train_s), len(eval_s), len(evals))):
        at = evals[i] if i < len(evals) else {}
        epoch = at.get("epoch", i + 1)
        logged = [h["loss"] for h in losses if epoch - 1 < h["epoch"] <= epoch]
        rows.append(
            {
                "epoch": _number(epoch, "g"),
                "train_seconds": _number(train_s[i] if i < len(train_s) else None, ".2f"),
                "eval_seconds": _number(eval_s[i] if i < len(eval_s) else None, ".2f"),
                "train_loss": _number(logged[-1] if logged else None),
                "eval_loss": _number(at.get("eval_loss")),
                "eval_accuracy": _number(at.get("eval_accuracy")),
            }
        )
    return rows


def _per_class_rows(metrics: dict) -> list[dict]:
    train = (metrics["train"] or {}).get("per_class_accuracy", {})
    return [
        {"label": esc(label), "eval": _number(value), "train": _number(train.get(label))}
        for label, value in metrics["eval"]["per_class_accuracy"].items()
    ]


def _reproduce(repo_id: str | None, num_processes: int) -> str:
    launch = "accelerate launch" + (f" --multi_gpu --num_processes {num_processes}" if num_processes > 1 else "")
    if repo_id:
        name = repo_id.split("/")[-1]
        return (
            f"hf-tl download {repo_id} dir={name}\n"
            f"{launch} -m hf_tl.train recipe={name}/recipe.yaml output.dir=runs/{name}-reproduced hub.push=false"
        )
    return (
        "# recipe.yaml is in this repository\n"
        f"{launch} -m hf_tl.train recipe=recipe.yaml output.dir=runs/reproduced hub.push=false"
    )


def _eval_args(metrics: dict, config_name: str | None) -> str:
    """hf_tl.inference.evaluate's dataset and split for the results this card records: the recipe names the dataset, and
    a split the run held out of train is `validation`, which `hf-tl eval` carves again."""
    split = metrics["eval_split"]
    words = [f"dataset={metrics['dataset']}"] if is_hub_id(metrics["dataset"]) else []
    words += [f"config_name={config_name}"] if config_name and words else []
    words.append(f"split={VALIDATION if is_held_out(split) else split}")
    return shlex.join(words)


def _usage(ref: str, mlp: bool) -> str:
    trust = ", trust_remote_code=True" if mlp else ""
    return (
        "from transformers import AutoImageProcessor, AutoModelForImageClassification\n\n"
        f'model = AutoModelForImageClassification.from_pretrained("{ref}"{trust})\n'
        f'processor = AutoImageProcessor.from_pretrained("{ref}")'
    )


def _read_json(path: Path, default: Any = None) -> Any:
    if not path.is_file():
        if default is not None:
            return default
        raise HfTlError(f"{path} is missing: the card is written from a finished run folder.")
    return json.loads(path.read_text())


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise HfTlError(f"{path} is missing: the card is written from a finished run folder.")
    return yaml.safe_load(path.read_text()) or {}
