"""Recipes: YAML files mapped onto typed sections, with dotted `key=value` overrides.

A recipe is data. It is read with OmegaConf's safe YAML loader, merged onto the
dataclasses below (which check types and unknown keys), then checked against each
field's `choices` and `min`. Every mistake becomes a `RecipeError` that names the key,
the bad value and what is allowed, with a did-you-mean where one is close.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf, errors

from hf_tl.config.resources import asset_path, recipe_dir
from hf_tl.errors import RecipeError, warn
from hf_tl.strategies import registry

SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "cosine_with_min_lr",
)
NO_WARMUP = ("constant", "reduce_lr_on_plateau")  # schedulers that ignore warmup_ratio
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "sgd", "adagrad", "adafactor")
SWITCHES = ("auto", "true", "false")
INTERPOLATION_CHOICES = ("bilinear", "bicubic", "nearest")  # the resize filters hf_tl runs batched
AUGMENTS = ("none", "flip", "crop_flip", "trivialaugment")  # data.augment, run on the device (hf_tl.data.augment)
SLICE_FORMS = "train[:10%], validation[:500], train[10:20], train[80%:], train[:50%]+test"  # datasets' syntax
RANDOM_AUGMENTS = ("crop_flip", "trivialaugment")  # new pixels at every step: no feature cache
# Keys that were renamed or replaced: the unknown-key error says what to write instead.
RENAMED_KEYS = {
    "data.hflip": "data.hflip is replaced by data.augment: data.augment=flip (hflip true) or data.augment=none "
    "(hflip false)",
}
STRATEGIES = tuple(registry.STRATEGIES)  # strategy.kind choices, in the registry's order


def option(
    default: Any, help: str, choices: tuple = (), min: float | None = None, positional: bool = False, **kw: Any
) -> Any:
    """A dataclass field carrying its help text and the checks OmegaConf cannot express (see `check_options`).

    `positional`: a command's key that may also be given bare, in its place (`hf-tl push runs/x repo_id=...`)."""
    meta = {"help": help, "choices": choices, "min": min, "positional": positional}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass
class ModelSection:
    name: str = option(MISSING, "Hub id or local directory of an image-classification checkpoint.")
    revision: Optional[str] = option(None, "Hub revision (branch, tag or commit) of model.name.")
    weights: str = option("pretrained", "'none' builds the model from its config alone.", ("pretrained", "none"))
    head: str = option("linear", "'mlp' is Malpure et al.'s Linear(d,256)-ELU-Dropout(0.5)-Linear.", ("linear", "mlp"))
    num_labels: Optional[int] = option(None, "Class count when no dataset is read (`hf-tl params`).", min=1)
    trust_remote_code: bool = option(False, "Run code shipped with the checkpoint. Only for sources you trust.")
    allow_pickle: bool = option(False, "Load pickle (.bin) weights, which can run code. Only for sources you trust.")


@dataclass
class StrategySection:
    kind: str = option("full", "Which parameters train.", STRATEGIES)
    unit: str = option(
        "stage",
        "What last_block/last_k count: 'stage' is Malpure et al.'s unit (a transformer or Swin block, a CNN stage); "
        "'block' is one block, also inside a CNN stage.",
        ("stage", "block"),
    )
    blocks: int = option(1, "How many trailing units last_k trains.", min=1)
    trainable: list[str] = option(
        [], "custom: globs over parameter names that train, e.g. ['*.layers.11.*', 'head.*']."
    )
    r: int = option(8, "LoRA rank.", min=1)
    alpha: int = option(16, "LoRA scaling alpha.", min=1)
    dropout: float = option(0.1, "LoRA dropout.", min=0.0)
    target_modules: list[str] = option([], "LoRA target module names; empty reads the family's default from the model.")


@dataclass
class DataSection:
    dataset: str = option(MISSING, "Hub id, image-folder directory, or a directory written by save_to_disk.")
    config_name: Optional[str] = option(None, "Dataset configuration name on the Hub.")
    revision: Optional[str] = option(
        None, "Hub revision (branch, tag or commit) of a Hub dataset: pins it, as model.revision pins the model."
    )
    train_split: str = option(
        "train", "Split to train on, or a slice of one in datasets' syntax, e.g. train[:10%] or train[:80%]."
    )
    eval_split: Optional[str] = option(
        None,
        "Split (or slice, e.g. validation[:500]) to validate on; default 'validation', else a seeded split of train.",
    )
    val_fraction: float = option(0.1, "Share of train held out when the dataset has no validation split.", min=0.0)
    image_column: Optional[str] = option(None, "Image column; detected from the features when unset.")
    label_column: Optional[str] = option(None, "Label column; detected from the features when unset.")
    max_train_samples: Optional[int] = option(None, "Keep this many training examples (seeded).", min=1)
    max_eval_samples: Optional[int] = option(None, "Keep this many validation examples.", min=1)
    resize: str = option(
        "auto",
        "How an image reaches the model's input size. 'direct': straight to it (CIFAR's 32->224); 'crop': the "
        "checkpoint's own evaluation pipeline (shorter side scaled as its image processor or timm's crop_pct says, "
        "then a centre crop); 'auto': direct when the training images are smaller than the input, else crop.",
        ("auto", "direct", "crop"),
    )
    interpolation: Optional[str] = option(
        None,
        "Resize filter; default bilinear under data.resize=direct, the image processor's own under crop.",
        INTERPOLATION_CHOICES,
    )
    augment: str = option(
        "flip",
        "Train-time augmentation, on the training device: 'none'; 'flip', a random horizontal flip; 'crop_flip', "
        "RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3, as timm and the transformers example) then a flip; "
        "'trivialaugment', crop_flip then TrivialAugmentWide. The random crops rule out the feature cache.",
        AUGMENTS,
    )
    image_mean: Optional[list[float]] = option(
        None, "Normalisation mean per channel, e.g. [0.5, 0.5, 0.5]; default the model's (its image processor's)."
    )
    image_std: Optional[list[float]] = option(None, "Normalisation std per channel; default the model's.")
    num_workers: Optional[int] = option(
        None,
        "Data-loader worker processes (they only decode images). Default: none on a CPU, which is busy "
        "training; with an accelerator, half the CPU cores up to 8.",
        min=0,
    )
    on_bad_image: str = option(
        "error", "An image that cannot be decoded: 'error' names it and stops, 'skip' leaves it out.", ("error", "skip")
    )


@dataclass
class TrainingSection:
    epochs: float = option(3.0, "Training epochs.", min=0.0)
    max_steps: int = option(-1, "Stop after this many optimizer steps; -1 uses epochs.", min=-1)
    batch_size: int = option(32, "Per-device training batch size.", min=1)
    eval_batch_size: Optional[int] = option(None, "Per-device evaluation batch size; default batch_size.", min=1)
    grad_accum: int = option(1, "Gradient accumulation steps.", min=1)
    lr: float = option(5e-5, "Peak learning rate.", min=0.0)
    weight_decay: float = option(0.0, "Weight decay.", min=0.0)
    layer_decay: Optional[float] = option(
        None,
        "Layer-wise learning-rate decay (BEiT, MAE, timm): each layer trains at lr x layer_decay^(layers below the "
        "head), above 0 and at most 1, e.g. 0.75. Unset: one learning rate for every layer.",
    )
    head_lr: Optional[float] = option(None, "Learning rate of the classifier head(s); default training.lr.", min=0.0)
    warmup_ratio: float = option(0.0, "Share of steps spent warming up (below 1).", min=0.0)
    scheduler: str = option("linear", "Learning-rate schedule (transformers' names).", SCHEDULERS)
    scheduler_kwargs: dict[str, Any] = option({}, "Extra scheduler arguments, e.g. {factor: 0.6, min_lr: 1e-7}.")
    optimizer: str = option(
        "adamw_torch_fused",
        f"Optimizer (transformers' names): {', '.join(OPTIMIZERS)}, or any other of transformers' OptimizerNames "
        "(e.g. rmsprop, schedule_free_adamw, lion_8bit; some need their own package); fused AdamW is the fastest.",
    )
    precision: str = option("fp32", "Mixed precision.", ("fp32", "bf16", "fp16"))
    seed: int = option(42, "Seed for initialisation, data split and order.")
    early_stopping_patience: Optional[int] = option(
        None, "Stop after this many evaluations without improvement.", min=1
    )
    logging_steps: int = option(10, "Log the loss every this many steps.", min=1)
    report_to: list[str] = option(
        [],
        "Trackers the Trainer also logs to (transformers' names: tensorboard, wandb, mlflow, trackio, ...), e.g. "
        "[tensorboard], which writes into the run folder's logs/. Default: none; the run's own per-epoch table is "
        "always written.",
    )
    args: dict[str, Any] = option(
        {},
        "Any other TrainingArguments field, e.g. training.args.max_grad_norm=0.5 or {eval_strategy: steps, "
        "eval_steps: 50} (saves then follow the evaluations unless save_strategy is given). Fields hf_tl sets "
        "from its own keys are refused, naming the key to use.",
    )
    label_smoothing: float = option(
        0.0, "Label smoothing of the training loss (below 1); evaluation's loss stays plain cross-entropy.", min=0.0
    )
    mixup: float = option(0.0, "Mixup alpha (timm's Mixup on each training batch); 0 is off.", min=0.0)
    cutmix: float = option(0.0, "CutMix alpha (timm's Mixup on each training batch); 0 is off.", min=0.0)
    cache_features: str = option(
        "auto",
        "Compute the frozen prefix (all before the first trainable block) once and train the rest on its output. "
        "'auto': where that is exact (linear_probe, last_block, last_k, custom with a frozen prefix, and no dropout "
        "in the prefix) and saves work in the run or reuses a stored cache; 'true': wherever possible, else an "
        "error; 'false': never.",
        SWITCHES,
    )
    cache_storage: str = option(
        "auto",
        "Where cached features live: 'auto' reuses a store on disk with the same key, else keeps them on the "
        "accelerator or in memory when they take under a quarter of its total memory, else on disk (memory-mapped, "
        "under $HF_TL_CACHE, reused by later runs with the same key); a store that took long to build in memory is "
        "also written there. 'memory' never touches the disk.",
        ("auto", "memory", "disk"),
    )
    train_metrics: bool = option(
        True,
        "After training, score the training images the run drew (all, unless it stopped inside its first epoch) "
        "for metrics.json's 'train', the card's train column and `hf-tl report`'s train accuracy: one inference pass "
        "over them. false skips it ('train' is null).",
    )
    channels_last: str = option(
        "auto", "channels_last memory format; 'auto': for convolutional networks on an accelerator.", SWITCHES
    )
    compile: bool = option(False, "torch.compile the model (slow to start, faster steps on a GPU).")
    resume: str = option(
        "auto",
        "'auto' continues from the last complete checkpoint in output.dir; 'never' discards them and starts over; "
        "a PATH to a checkpoint folder (one holding trainer_state.json, e.g. another run's "
        "checkpoints/checkpoint-48) continues from that one.",
    )


@dataclass
class HubSection:
    push: bool = option(False, "Push the run folder to the Hub at the end of the run.")
    repo_id: Optional[str] = option(None, "Target repository, 'user/name'.")
    private: bool = option(False, "Create the repository private.")


@dataclass
class OutputSection:
    dir: Optional[str] = option(None, "Run folder; default runs/<recipe>-<timestamp>.")
    overwrite: bool = option(
        False,
        "Train again over the run in output.dir: its files (only hf_tl's) are set aside, and removed once this run "
        "saves its first checkpoint. Default: the same recipe resumes, or is reported complete.",
    )


@dataclass
class Recipe:
    model: ModelSection = field(default_factory=ModelSection)
    strategy: StrategySection = field(default_factory=StrategySection)
    data: DataSection = field(default_factory=DataSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    hub: HubSection = field(default_factory=HubSection)
    output: OutputSection = field(default_factory=OutputSection)
    name: str = "recipe"


SECTIONS = {
    "model": ModelSection,
    "strategy": StrategySection,
    "data": DataSection,
    "training": TrainingSection,
    "hub": HubSection,
    "output": OutputSection,
}
_ASSET = re.compile(r"\$\{hf_tl\.asset:([^}]*)\}")


def available_recipes() -> list[str]:
    return sorted(p.stem for p in recipe_dir().glob("*.yaml"))


def find_recipe(name_or_path: str) -> Path:
    """A shipped recipe by name, or a YAML file by path."""
    hint = "or give a path to a .yaml file; `hf-tl recipes list` shows them all."
    return find_yaml(name_or_path, recipe_dir(), "recipe", hint)


def find_yaml(name_or_path: str, shipped_in: Path, what: str, hint: str) -> Path:
    """`name_or_path` as a YAML path, or the shipped `shipped_in/NAME.yaml`; else an error listing the shipped ones."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise RecipeError(f"{what} file '{name_or_path}' does not exist.")
        return path
    shipped = shipped_in / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    known = sorted(p.stem for p in shipped_in.glob("*.yaml"))
    raise RecipeError(
        f"unknown {what} '{name_or_path}'.{did_you_mean(name_or_path, known)}\n"
        f"  known {what[:-1] + 'ies' if what.endswith('y') else what + 's'}: {', '.join(known)}\n  {hint}"
    )


def parse_args(argv: list[str]) -> tuple[str, list[str]]:
    """Split `recipe=NAME key=value ...` into the recipe and its overrides."""
    recipe, overrides = None, []
    for arg in argv:
        if "=" not in arg:
            raise RecipeError(f"argument '{arg}' is not of the form key=value (e.g. training.lr=3e-4).")
        key, value = arg.split("=", 1)
        if key.lstrip("+") == "recipe":
            recipe = value
        else:
            overrides.append(arg)
    if recipe is None:
        raise RecipeError(f"no recipe given: start with recipe=NAME. Known recipes: {', '.join(available_recipes())}")
    return recipe, overrides


def load_recipe(name_or_path: str, overrides: list[str] = ()) -> Recipe:
    """Load a recipe, apply overrides, and return it typed and checked."""
    path = find_recipe(name_or_path)
    raw = _read_yaml(path)
    for change in upgrade_written(raw):
        warn(f"{path}: {change}")
    return _typed(raw, {"name": path.stem}, overrides)


def with_overrides(recipe: Recipe, overrides: list[str]) -> Recipe:
    """A recipe built in code, with command-line overrides applied and checked as a loaded recipe's are."""
    return _typed(OmegaConf.structured(recipe), {}, overrides)


def _typed(raw: DictConfig, name: dict, overrides: list[str]) -> Recipe:
    schema = OmegaConf.structured(Recipe)
    try:
        merged = OmegaConf.merge(schema, raw, name, _dotlist(overrides))
    except errors.ConfigKeyError as e:
        raise RecipeError(_unknown_key_message(e.full_key)) from None
    except errors.ValidationError as e:
        if e.full_key is None:  # a whole section replaced by a scalar
            raise RecipeError(_scalar_section_message(raw, overrides)) from None
        raise RecipeError(_bad_type_message(e.full_key, e.value)) from None
    _check_missing(merged)
    _expand_assets(merged)
    recipe: Recipe = OmegaConf.to_object(merged)
    check_values(recipe)
    return recipe


def recipe_from_argv(argv: list[str]) -> Recipe:
    name, overrides = parse_args(argv)
    return load_recipe(name, overrides)


def to_yaml(recipe: Recipe) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(recipe))


def _read_yaml(path: Path) -> DictConfig:
    return read_mapping(path, "recipe", "of sections (model, strategy, data, ...)")


def read_mapping(path: Path, what: str, contents: str) -> DictConfig:
    """A YAML mapping read with OmegaConf's safe loader; the only interpolation allowed is `${hf_tl.asset:...}`."""
    try:
        raw = OmegaConf.load(path)
    except Exception as e:  # yaml.YAMLError and OmegaConf's own errors
        raise RecipeError(f"{what} '{path}' is not valid YAML: {e}") from None
    if not isinstance(raw, DictConfig):
        raise RecipeError(f"{what} '{path}' must be a mapping {contents}.")
    _reject_interpolations(raw, "")
    return raw


def _dotlist(overrides: list[str]) -> DictConfig:
    for item in overrides:
        if "${" in item:
            raise RecipeError(f"override '{item}': interpolations are not allowed on the command line.")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except Exception as e:
        raise RecipeError(f"could not parse overrides {list(overrides)}: {e}") from None


def _reject_interpolations(node: Any, prefix: str) -> None:
    """Recipes are data: the only interpolation allowed is `${hf_tl.asset:...}`."""
    if OmegaConf.is_config(node):
        node = OmegaConf.to_container(node, resolve=False)
    for key, value in node.items() if isinstance(node, dict) else enumerate(node):
        full = f"{prefix}{key}"
        if isinstance(value, (dict, list)):
            _reject_interpolations(value, f"{full}.")
        elif isinstance(value, str) and "${" in value and not _ASSET.fullmatch(value):
            raise RecipeError(
                f"recipe key '{full}': interpolation '{value}' is not allowed; only ${{hf_tl.asset:PATH}}."
            )


def _expand_assets(cfg: DictConfig) -> None:
    for section in cfg.values() if isinstance(cfg, DictConfig) else ():
        if not isinstance(section, DictConfig):
            continue
        for key, value in section.items_ex(resolve=False):
            if isinstance(value, str) and (m := _ASSET.fullmatch(value)):
                section[key] = str(asset_path(m.group(1)))


def _check_missing(cfg: DictConfig) -> None:
    for section_name, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            if OmegaConf.is_missing(cfg[section_name], f.name):
                raise RecipeError(
                    f"recipe key '{section_name}.{f.name}' is required: {f.metadata['help']} "
                    f"Set it in the recipe or as {section_name}.{f.name}=..."
                )


def check_options(obj: Any, prefix: str = "", what: str = "recipe key") -> None:
    """Every `option` field of the dataclass `obj` against its choices and minimum."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        choices, low = f.metadata.get("choices"), f.metadata.get("min")
        if choices and value is not None and value not in choices:  # None: an Optional left unset
            raise RecipeError(
                f"{what} '{key}' got '{value}', which is not one of: {', '.join(choices)}."
                f"{did_you_mean(str(value), choices)}"
            )
        if low is not None and value is not None and value < low:
            raise RecipeError(f"{what} '{key}' got {value}; it must be at least {low}.")


def check_values(recipe: Recipe) -> None:
    """What the schema cannot say: ranges, and values that only make sense together."""
    for key in ("cache_features", "channels_last"):  # YAML reads true/false as booleans, OmegaConf as 'True'
        setattr(recipe.training, key, str(getattr(recipe.training, key)).lower())
    for section_name in SECTIONS:
        check_options(getattr(recipe, section_name), f"{section_name}.")
    if recipe.data.resize == "direct" and recipe.data.interpolation is None:
        recipe.data.interpolation = "bilinear"  # what direct means by default, written out: the same run either way
    decay = recipe.training.layer_decay
    if decay is not None and not 0 < decay <= 1:
        raise RecipeError(
            f"recipe key 'training.layer_decay' got {decay}; it must be above 0 and at most 1 (0.65 to 0.75 is usual), "
            "or null for none."
        )
    if not 0 < recipe.data.val_fraction < 1:
        raise RecipeError(
            f"recipe key 'data.val_fraction' got {recipe.data.val_fraction}; it must lie strictly between 0 and 1."
        )
    for key, value in (
        ("training.warmup_ratio", recipe.training.warmup_ratio),
        ("training.label_smoothing", recipe.training.label_smoothing),
        ("strategy.dropout", recipe.strategy.dropout),
    ):
        if value >= 1:
            raise RecipeError(f"recipe key '{key}' got {value}; it must be below 1.")
    for key in ("image_mean", "image_std"):
        values = getattr(recipe.data, key)
        if values is not None and (len(values) != 3 or (key == "image_std" and min(values) <= 0)):
            rule = "three positive numbers" if key == "image_std" else "three numbers"
            raise RecipeError(f"recipe key 'data.{key}' got {values}; it must be {rule}, one per RGB channel.")
    if recipe.hub.push and not recipe.hub.repo_id:
        raise RecipeError("hub.push=true needs hub.repo_id=user/name.")
    _check_something_trains(recipe.training)
    check_scheduler_kwargs(recipe.training)
    _check_split_specs(recipe.data)
    _check_cacheable(recipe)


def _check_something_trains(t: TrainingSection) -> None:
    """A run that would take no optimizer step at a learning rate above 0 is refused before any work."""
    if t.max_steps == 0:
        raise RecipeError(
            "recipe key 'training.max_steps' got 0: nothing would train. Set a number of steps, "
            "or training.max_steps=-1 to train for training.epochs."
        )
    if t.max_steps < 0 and t.epochs == 0:
        raise RecipeError(
            "recipe key 'training.epochs' got 0: nothing would train. Set training.epochs above 0 "
            "(e.g. training.epochs=1), or a number of steps with training.max_steps."
        )
    if t.max_steps > 0:
        check_steps_train(t, t.max_steps, f"training.max_steps={t.max_steps}")


def random_inputs(recipe: Recipe) -> list[str]:
    """The settings that give the model new inputs at every step (`key=value`): a feature cache holds fixed ones."""
    keys = [f"data.augment={recipe.data.augment}"] if recipe.data.augment in RANDOM_AUGMENTS else []
    return keys + [
        f"training.{k}={getattr(recipe.training, k):g}" for k in ("mixup", "cutmix") if getattr(recipe.training, k)
    ]


def _check_cacheable(recipe: Recipe) -> None:
    """training.cache_features=true with a random augmentation or mixing is refused before any work."""
    random = random_inputs(recipe)
    if recipe.training.cache_features == "true" and random:
        raise RecipeError(
            f"recipe key 'training.cache_features' got true, but {' and '.join(random)} "
            f"{'change' if len(random) > 1 else 'changes'} the images at every step, and cached features are "
            "computed once. Use training.cache_features=auto (or false), or an "
            "augmentation the cache can hold: data.augment=flip or none, without mixup and cutmix."
        )


def warmup_steps(t: TrainingSection, total_steps: int) -> int:
    """Optimizer steps spent warming up from learning rate 0, counted as transformers counts them."""
    if t.scheduler in NO_WARMUP or t.warmup_ratio == 0:
        return 0
    return math.ceil(total_steps * t.warmup_ratio)


def check_steps_train(t: TrainingSection, total_steps: int, why: str) -> None:
    """The warm-up's first step is at learning rate 0: a run of that one step alone trains nothing."""
    if total_steps - min(warmup_steps(t, total_steps), 1) <= 0:
        raise RecipeError(
            f"training would take {total_steps} optimizer step ({why}), and with training.warmup_ratio="
            f"{t.warmup_ratio} that step is the warm-up's first, at learning rate 0: nothing would train. "
            "Set training.warmup_ratio=0, or train for more steps."
        )


# get_scheduler builds these without scheduler_specific_kwargs: any given would be dropped without a word.
SCHEDULERS_WITHOUT_KWARGS = ("constant", "constant_with_warmup")
SCHEDULER_OWN_ARGUMENTS = ("optimizer", "num_warmup_steps", "num_training_steps", "last_epoch")  # the Trainer's


def check_scheduler_kwargs(t: TrainingSection) -> None:
    """training.scheduler_kwargs as transformers' get_scheduler takes them, checked before any work: each key is
    an argument of the scheduler's function (of torch's ReduceLROnPlateau for reduce_lr_on_plateau), and the
    scheduler builds with them. cosine_with_min_lr is checked even without any: it needs min_lr or min_lr_rate."""
    if not t.scheduler_kwargs and t.scheduler != "cosine_with_min_lr":
        return  # nothing to check, and transformers.optimization is slow to import
    import inspect

    import torch
    from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION, SchedulerType, get_scheduler

    given = dict(t.scheduler_kwargs)
    builder = TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(t.scheduler)]
    if t.scheduler == "reduce_lr_on_plateau":  # get_reduce_on_plateau_schedule passes **kwargs on to it
        builder = torch.optim.lr_scheduler.ReduceLROnPlateau
    parameters = [] if t.scheduler in SCHEDULERS_WITHOUT_KWARGS else inspect.signature(builder).parameters
    valid = [name for name in parameters if name not in SCHEDULER_OWN_ARGUMENTS]
    for key in given:
        if key not in valid:
            accepted = f"it takes: {', '.join(valid)}" if valid else "it takes none"
            raise RecipeError(
                f"recipe key 'training.scheduler_kwargs' has '{key}', which training.scheduler={t.scheduler} does not "
                f"take.{did_you_mean(key, valid)} {accepted.capitalize()}."
            )
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=t.lr)
    try:  # a trial build with a stand-in optimizer: the values are checked where they are used
        get_scheduler(t.scheduler, optimizer, 0, 10, scheduler_specific_kwargs=given)  # 0 warm-up steps of 10
    except (TypeError, ValueError) as e:
        raise RecipeError(
            f"recipe key 'training.scheduler_kwargs' got {given} for training.scheduler={t.scheduler}: {e}"
        ) from None


RESUME_CHOICES = ("auto", "never")  # or a checkpoint folder's path


def resume_path(t: TrainingSection) -> Path | None:
    """The checkpoint folder given by path (`training.resume=PATH`), or None for auto and never."""
    return None if t.resume in RESUME_CHOICES else Path(t.resume)


def check_resume(t: TrainingSection) -> None:
    """training.resume=PATH names a checkpoint folder: one the Trainer can read a state from (damage: at the run).

    Checked where a run starts (`hf-tl train`, `run`), not when any recipe is read: a run folder's recipe.yaml read
    later (by eval, report, a sweep) must not depend on a checkpoint that has since gone."""
    folder = resume_path(t)
    if folder is None:
        return
    takes = "It takes 'auto', 'never' or the path of a checkpoint folder (a run's checkpoints/checkpoint-N)."
    if not folder.is_dir():
        close = did_you_mean(t.resume, RESUME_CHOICES)
        raise RecipeError(f"recipe key 'training.resume' got '{t.resume}', which is no folder.{close} {takes}")
    if not (folder / "trainer_state.json").is_file():
        inside = sorted(str(p) for p in folder.glob("checkpoints/checkpoint-*"))  # a run folder, given whole
        hint = f" Its checkpoints: {', '.join(inside)}." if inside else ""
        raise RecipeError(
            f"recipe key 'training.resume' got '{t.resume}', which is not a checkpoint (no trainer_state.json).{hint} "
            f"{takes}"
        )


def _check_split_specs(data: DataSection) -> None:
    """A slice (`train[:10%]`) is parsed by datasets' own parser before any work; whether its split exists is known
    only once the dataset is open."""
    for key in ("train_split", "eval_split"):
        spec = getattr(data, key)
        if not spec or ("[" not in spec and "+" not in spec):
            continue
        from datasets import ReadInstruction  # only for a slice: datasets is slow to import

        try:
            ReadInstruction.from_spec(spec)
        except (ValueError, AssertionError) as e:
            raise RecipeError(
                f"recipe key 'data.{key}' got '{spec}', which is not a valid slice ({e}). A slice is written as "
                f"datasets writes it: {SLICE_FORMS}."
            ) from None


def sets_trainer_keys(t: TrainingSection) -> bool:
    """Whether the recipe sets what only transformers can check (`hf_tl.training.arguments.check_trainer_keys`):
    training.report_to, training.args, an optimizer beyond the documented five. Checked there, not here: it imports
    transformers, and the training package is above this one."""
    return bool(t.report_to or t.args or t.optimizer not in OPTIMIZERS)


def did_you_mean(value: str, choices: Any) -> str:
    """' Did you mean X?' for the closest of `choices`, or ''."""
    close = difflib.get_close_matches(value, [str(c) for c in choices], n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def upgrade_written(raw: DictConfig) -> list[str]:
    """A recipe file written for an earlier hf_tl, read as it ran: `data.hflip` becomes `data.augment`, and such a
    file (a run folder's recipe.yaml, resolved in full) resized straight to the input (`data.resize=direct`), the
    only way there was. Returns what was changed, one line each; a command-line `data.hflip` is still an error."""
    data = raw.get("data") if isinstance(raw, DictConfig) else None
    if not isinstance(data, DictConfig) or "hflip" not in data or "augment" in data:
        return []
    augment = "flip" if data.pop("hflip") else "none"
    data["augment"] = augment
    changes = [f"data.hflip (an earlier hf_tl's key) read as data.augment={augment}"]
    if "resize" not in data:
        data["resize"] = "direct"
        changes.append("no data.resize (an earlier hf_tl's recipe): read as data.resize=direct, how it resized")
    return changes


def _unknown_key_message(full_key: str) -> str:
    if str(full_key) in RENAMED_KEYS:
        return RENAMED_KEYS[str(full_key)] + "."
    path = str(full_key).split(".")
    if path[0] in SECTIONS:
        valid = [f"{path[0]}.{f.name}" for f in dataclasses.fields(SECTIONS[path[0]])]
        where = f" in '{path[0]}'"
    else:
        valid, where = list(SECTIONS), ""
    bad = ".".join(path[:2]) if path[0] in SECTIONS else path[0]
    return f"unknown recipe key '{full_key}'.{did_you_mean(bad, valid)}\n  valid keys{where}: {', '.join(valid)}"


def type_name(annotation: Any) -> str:
    """A field's type as a user reads it: `Optional[int]` is `int`."""
    return re.sub(r"^(typing\.)?Optional\[(.*)\]$", r"\2", str(annotation))


def same_option(section: type, name: str, default: Any = dataclasses.MISSING) -> Any:
    """An `option` with the help, choices and minimum of a recipe section's field, for another command's args."""
    source = next(f for f in dataclasses.fields(section) if f.name == name)
    value = source.default if default is dataclasses.MISSING else default
    return option(value, source.metadata["help"], source.metadata["choices"], source.metadata["min"])


def _bad_type_message(full_key: str, value: Any) -> str:
    section, _, key = str(full_key).partition(".")
    types = {f.name: f.type for f in dataclasses.fields(SECTIONS[section])} if section in SECTIONS else {}
    expected = type_name(types.get(key, "mapping of keys"))
    if key in types and "Optional" in str(types[key]):
        expected += " (or null)"
    hint = ""
    if OmegaConf.is_config(value) or hasattr(value, "_value"):  # a node: OmegaConf reports the node, not its value
        value = value._value()
    if expected.startswith("list[") and isinstance(value, (str, int, float)):
        hint = f" A list is written in brackets: {full_key}=[{value}]."
    return f"recipe key '{full_key}' got {value!r}, which is not a valid {expected}.{hint}"


def _scalar_section_message(raw: DictConfig, overrides: list[str]) -> str:
    given = {k: v for k, v in raw.items_ex(resolve=False) if k in SECTIONS and not isinstance(v, DictConfig)}
    given.update({k: v for k, _, v in (o.partition("=") for o in overrides) if k in SECTIONS})
    name, value = next(iter(given.items()), ("?", "?"))
    return f"recipe key '{name}' got {value!r}; it must be a mapping of {name}.* keys (e.g. {name}.KEY=VALUE)."
