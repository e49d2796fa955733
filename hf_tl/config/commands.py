"""The arguments of every `hf-tl` command other than a recipe's: dataclasses of `option` fields.

The commands' parser and their `--help` read the same fields, and nothing here imports torch: a typo is
answered before any heavy import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING

from hf_tl.config.recipe import (
    INTERPOLATION_CHOICES,
    DataSection,
    ModelSection,
    TrainingSection,
    option,
    same_option,
)
from hf_tl.studies.study import TABLE_LAYOUTS

LABEL_MODES = ("by_name", "by_index")
MIN_BATCH = 4  # the unbiased HSIC estimator divides by n(n-3)
LAYER_CHOICES = ("blocks", "all")
TOKEN_MODES = ("flatten", "cls", "mean")
LAUNCHERS = ("python", "accelerate")
BACKBONE_DIR = "backbone"  # the quickstart's folders
FINETUNE_DIR = "digits-5-9"
ZOO_DIR = "zoo"  # the quickstart's miniature zoo
ZOO_FILE = "zoo.yaml"


@dataclass
class EvalArgs:
    model: str = option(MISSING, "Hub id or local directory of an image-classification checkpoint.")
    dataset: Optional[str] = option(
        None, "Hub id or directory of a labelled dataset; default, for an hf_tl run or checkpoint, its own."
    )
    split: str = option(
        "test",
        "Split to evaluate on. 'validation' on an hf_tl run or checkpoint whose dataset has no such split is the "
        "part of the training split the run held out, carved again exactly as the run did.",
    )
    config_name: Optional[str] = same_option(DataSection, "config_name")
    revision: Optional[str] = option(None, "Hub revision (branch, tag or commit) of the model.")
    labels: str = option("by_name", "Map dataset labels onto the model's id2label by name, or by index.", LABEL_MODES)
    batch_size: int = option(64, "Images per forward pass.", min=1)
    output: Optional[str] = option(None, "Folder for eval.json and the PNG; default evals/<model>__<dataset>__<split>.")
    image_column: Optional[str] = same_option(DataSection, "image_column")
    label_column: Optional[str] = same_option(DataSection, "label_column")
    max_samples: Optional[int] = option(None, "Evaluate only the first N examples of the split.", min=1)
    interpolation: Optional[str] = option(
        None, "Resize filter; default the checkpoint's own, as its image processor says.", INTERPOLATION_CHOICES
    )
    num_workers: Optional[int] = same_option(DataSection, "num_workers")
    device: Optional[str] = option(None, "cpu, cuda, cuda:1, ...; default: the accelerator if there is one.")
    trust_remote_code: bool = option(False, "Run model code shipped with the checkpoint (hf_tl MLP heads need it).")
    on_bad_image: str = same_option(DataSection, "on_bad_image")
    allow_pickle: bool = same_option(ModelSection, "allow_pickle")


@dataclass
class DataArgs:
    """What both commands read: which images, how many, in what order."""

    dataset: str = same_option(DataSection, "dataset")
    split: Optional[str] = option(None, "Split to read; default test, else validation, else train.")
    config_name: Optional[str] = same_option(DataSection, "config_name")
    image_column: Optional[str] = same_option(DataSection, "image_column")
    seed: int = option(0, "Seed of the shuffle that picks the examples (and mixes classes within each minibatch).")
    interpolation: Optional[str] = option(
        None, "Resize filter; default each checkpoint's own, as its image processor says.", INTERPOLATION_CHOICES
    )
    num_workers: Optional[int] = same_option(DataSection, "num_workers")
    on_bad_image: str = same_option(DataSection, "on_bad_image")
    device: Optional[str] = option(None, "cpu, cuda, cuda:1, ...; default: the accelerator if there is one.")
    trust_remote_code: bool = same_option(ModelSection, "trust_remote_code")
    allow_pickle: bool = same_option(ModelSection, "allow_pickle")
    out: Optional[str] = option(None, "Output folder; default analysis/<model(s)>__<dataset>/.")


@dataclass
class CkaArgs(DataArgs):
    model_a: str = option(MISSING, "Hub id or local directory of the first checkpoint (rows of the matrix).")
    model_b: Optional[str] = option(None, "The second checkpoint (columns); default model_a, a self-similarity.")
    num_examples: int = option(10240, "Images to compare on (fewer if the split is smaller).", min=MIN_BATCH)
    batch_size: int = option(1024, "Minibatch of the CKA estimator; memory grows with its square.", min=MIN_BATCH)
    layers: str = option(
        "blocks", "blocks: embedding, every block, pre-head; all: also each block's sublayers.", LAYER_CHOICES
    )
    tokens: str = option(
        "flatten", "Token or feature-map outputs: flatten them all, take the class token, or their mean.", TOKEN_MODES
    )


@dataclass
class DistanceArgs(DataArgs):
    model: str = option(MISSING, "Hub id or local directory of a ViT-like checkpoint.")
    num_examples: int = option(1024, "Images to average over (fewer if the split is smaller).", min=1)
    batch_size: int = option(64, "Images per forward pass.", min=1)


@dataclass
class SweepArgs:
    study: str = option(MISSING, "A shipped study (malpure2021, malpure2021_repo, zhou2021) or a study .yaml path.")
    only: Optional[str] = option(
        None, "Comma-separated globs over cells: backbone=GLOB, dataset=GLOB, strategy=GLOB, or a bare GLOB."
    )
    out: Optional[str] = option(None, "Sweep folder; default runs/sweeps/<study>[-<hash of the overrides>].")
    launcher: str = option("python", "How each cell starts: python -m hf_tl.train, or accelerate launch.", LAUNCHERS)
    launcher_args: str = option("", "Extra arguments for accelerate launch, e.g. '--num_processes 2'.")
    dry_run: bool = option(False, "Write each cell's recipe and print its command; train nothing.")


@dataclass
class SelectArgs:
    dataset: str = same_option(DataSection, "dataset")
    models: list[str] = option([], "Candidate checkpoints, Hub ids or local folders: models=[id1,id2,...].")
    zoo: Optional[str] = option(
        None, "A shipped list of candidates (imagenet_base, malpure2021, zhou2021, miniature) or a zoo .yaml path."
    )
    config_name: Optional[str] = same_option(DataSection, "config_name")
    eval_split: Optional[str] = same_option(DataSection, "eval_split")
    val_fraction: float = same_option(DataSection, "val_fraction")
    image_column: Optional[str] = same_option(DataSection, "image_column")
    label_column: Optional[str] = same_option(DataSection, "label_column")
    max_train_samples: Optional[int] = same_option(DataSection, "max_train_samples")
    max_eval_samples: Optional[int] = same_option(DataSection, "max_eval_samples")
    batch_size: int = option(64, "Images per frozen forward pass.", min=1)
    precision: str = same_option(TrainingSection, "precision")
    seed: int = option(
        TrainingSection.seed, "Seed of the validation carve, the subsampling and the probe; a training run's default."
    )
    top_k: int = option(3, "How many of the best candidates the study file (and finetune=true) takes.", min=1)
    finetune: bool = option(False, "Then fine-tune the top_k with last_block and full (`hf-tl sweep`), and report.")
    out: Optional[str] = option(None, "Output folder; default selections/<dataset>/.")
    num_workers: Optional[int] = same_option(DataSection, "num_workers")
    on_bad_image: str = same_option(DataSection, "on_bad_image")
    trust_remote_code: bool = same_option(ModelSection, "trust_remote_code")
    allow_pickle: bool = same_option(ModelSection, "allow_pickle")


@dataclass
class QuickstartArgs:
    out: str = option(
        MISSING,
        f"Folder to write {BACKBONE_DIR}/ and {FINETUNE_DIR}/ into (made if need be; anything else in it is left "
        "alone). Not inside the installed hf_tl package.",
        positional=True,
    )
    zoo: bool = option(
        False,
        f"Also rebuild the miniature zoo: a tiny ResNet, ConvNeXt and Swin pretrained like the ViT, into {ZOO_DIR}/, "
        f"and {ZOO_FILE}, a zoo of them and {BACKBONE_DIR}/ for `hf-tl select` (a few more CPU-minutes).",
    )


@dataclass
class PushArgs:
    run: str = option(MISSING, "The run folder a finished `hf-tl train` wrote (its output.dir).", positional=True)
    repo_id: str = option(MISSING, "Target repository, user/name; created if it does not exist.")
    private: bool = option(False, "Create the repository private.")


@dataclass
class DownloadArgs:
    repo_id: str = option(MISSING, "Repository id, user/name.", positional=True)
    revision: Optional[str] = option(None, "Branch, tag or commit; default main.")
    dir: Optional[str] = option(None, "Download into this folder instead of the HF cache.")


@dataclass
class ReportArgs:
    paths: list[str] = option(
        [], "Sweep folders, run folders, or folders of run folders (one or more).", positional=True
    )
    out: Optional[str] = option(None, "Where to write; default PATH/report for one path, else ./report.")
    layout: Optional[str] = option(None, "The table's shape; default the study's (malpure otherwise).", TABLE_LAYOUTS)


@dataclass
class RecipesListArgs:
    json: bool = option(False, "Print the list as JSON: [{name, description, path}, ...] (also --json).")


@dataclass
class RecipesShowArgs:
    name: str = option(MISSING, "A shipped recipe's name.", positional=True)


@dataclass
class RecipesCopyArgs:
    name: str = option(MISSING, "A shipped recipe's name.", positional=True)
    dest: str = option(
        MISSING, "A .yaml path, or a folder (made if need be); never over an existing file.", positional=True
    )
