"""`training.cache_features`: run the frozen prefix once over the data, then train the rest on its output.

A last-block run of a 12-block model otherwise recomputes, every epoch, eleven blocks whose
output never changes. Here those blocks run once per image (twice with horizontal flip: both
views are kept, and each training step picks the view `preprocess.draw_flips` draws, exactly
as the uncached path would flip), in eval mode without gradients; validation and the final
train-set evaluation read the same store. `prefix_split` finds the cut from the blocks map and
checks on real images that the cached path gives the uncached logits.

The store lives on the accelerator or in memory when it fits in half of what is free, else on
disk under `$HF_TL_CACHE` (default `$HF_HOME/hf_tl/features`) as memory-mapped files, where a
later run with the same key reuses it. The key holds everything the features depend on: the
model and a digest of its frozen weights, the cut, the preprocessing, the dataset fingerprints,
the dtype and library versions; a store is renamed into place only when complete.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import broadcast_object_list
from datasets import Dataset
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from hf_tl.data import Splits, collate_images, image_transform
from hf_tl.environment import library_versions, process_state
from hf_tl.errors import HfTlError
from hf_tl.prefix_split import NotCacheable, Split, plan, random_in_training, stochastic_prefix
from hf_tl.preprocess import to_device
from hf_tl.recipe import Recipe
from hf_tl.rundir import sync_tree
from hf_tl.trainer import disk_full

CACHEABLE = ("linear_probe", "last_block", "last_k", "custom")
KEY_LIBRARIES = ("hf-tl", "torch", "torchvision", "transformers", "timm")  # what computes the features
FORMAT = 1
META_FILE = "meta.json"
PROBE_IMAGES = 4
FREE_SHARE = 0.5  # of free host memory the store may take
ACCELERATOR_SHARE = 0.25  # of free accelerator memory


@dataclass
class FeatureCache:
    split: Split
    store: list[torch.Tensor]  # per cached tensor: (rows, ...); rows are train, train flipped (if hflip), eval
    num_train: int
    views: int
    train_labels: list[int]
    eval_labels: list[int]
    report: dict[str, Any]

    def datasets(self) -> tuple[CachedRows, CachedRows]:
        """Training rows (with their flipped twins) and validation rows."""
        train = torch.arange(self.num_train)
        flipped = train + self.num_train if self.views == 2 else train
        evals = torch.arange(len(self.eval_labels)) + self.views * self.num_train
        return CachedRows(train, flipped, self.train_labels), CachedRows(evals, evals, self.eval_labels)

    def train_eval_dataset(self) -> CachedRows:
        """The training images, unflipped: for the train-set metrics after training."""
        rows = torch.arange(self.num_train)
        return CachedRows(rows, rows, self.train_labels)

    def model_inputs(self, inputs: dict[str, torch.Tensor], flips: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Feed the batch's cached tensors to the entry; the model gets placeholder pixels it never reads."""
        rows = inputs["cache_row"] if flips is None else torch.where(flips, inputs["flipped_row"], inputs["cache_row"])
        device = inputs["labels"].device
        self.split.feed.leaves = [
            part[rows.to(part.device)].to(device, dtype, non_blocking=True)
            for part, dtype in zip(self.store, self.split.input_dtypes, strict=True)
        ]
        return {"pixel_values": self.split.placeholder_pixels(len(rows), device), "labels": inputs["labels"]}

    def close(self, model: torch.nn.Module) -> None:
        """Give the model back its own forward, before it is saved."""
        self.split.detach(model)


class CachedRows(torch.utils.data.Dataset):
    def __init__(self, rows: torch.Tensor, flipped: torch.Tensor, labels: list[int]) -> None:
        self.rows, self.flipped, self.labels = rows, flipped, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, int]:
        return {"cache_row": int(self.rows[i]), "flipped_row": int(self.flipped[i]), "labels": self.labels[i]}


def collate_rows(examples: list[dict]) -> dict[str, torch.Tensor]:
    return {key: torch.tensor([e[key] for e in examples]) for key in ("cache_row", "flipped_row", "labels")}


def prepare(trainer: Any, recipe: Recipe, splits: Splits) -> FeatureCache | None:
    """Build or reuse the store and point the trainer at it; None (and why, printed) where the cache is off."""
    mode = recipe.training.cache_features
    if mode == "false":
        return None
    devices = [] if trainer.args.device.type == "cpu" else [trainer.args.device]
    # Data loaders draw their seeds from the global generator: fork it, so the training draws the same
    # shuffles and flips with the cache as without it.
    with torch.random.fork_rng(devices, device_type=trainer.args.device.type):
        return _prepare(trainer, recipe, splits, mode)


def _prepare(trainer: Any, recipe: Recipe, splits: Splits, mode: str) -> FeatureCache | None:
    try:
        split = _split(trainer, recipe, splits)
    except NotCacheable as reason:
        if mode == "true":
            raise HfTlError(f"training.cache_features=true, but {reason}. Use auto or false.") from None
        _say(f"feature cache off: {reason}")
        return None
    started = time.perf_counter()
    store, location = _store(trainer, recipe, splits, split)
    cache = FeatureCache(
        split,
        store,
        len(splits.train),
        2 if recipe.data.hflip else 1,
        list(splits.train[splits.label_column]),
        list(splits.eval[splits.label_column]),
        {"used": True, "entries": split.entries, "location": location},
    )
    cache.report["prepare_seconds"] = round(time.perf_counter() - started, 3)
    split.attach(trainer.model)
    trainer.train_dataset, trainer.eval_dataset = cache.datasets()
    trainer.data_collator = collate_rows
    gigabytes = sum(part.numel() * part.element_size() for part in store) / 2**30
    _say(
        f"feature cache on: training starts at {', '.join(split.entries)}; {gigabytes:.2f} GB of features "
        f"({location}), ready in {cache.report['prepare_seconds']:.1f} s"
    )
    return cache


def _split(trainer: Any, recipe: Recipe, splits: Splits) -> Split:
    if recipe.strategy.kind not in CACHEABLE:
        raise NotCacheable(
            f"strategy {recipe.strategy.kind} trains inside every block (cached: {', '.join(CACHEABLE)})"
        )
    images = splits.eval.select(range(min(PROBE_IMAGES, len(splits.eval)))).with_transform(
        image_transform(splits.image_column, splits.label_column)
    )
    batch = collate_images([images[i % len(images)] for i in range(PROBE_IMAGES)])
    device = trainer.args.device

    def pixels(n: int) -> torch.Tensor:
        return trainer.preprocess(to_device(batch["images"][:n], device))

    split = plan(trainer.model, pixels)
    split.verify(trainer.model, pixels(PROBE_IMAGES))
    # Dropout modules are found by their rate; dropout the model's code applies by itself shows in two passes.
    stochastic = stochastic_prefix(trainer.model, split)
    if recipe.training.cache_features == "auto" and (
        stochastic or random_in_training(trainer.model, split, pixels(PROBE_IMAGES))
    ):
        where = (stochastic or ["the frozen part"])[0]
        raise NotCacheable(
            f"{where} drops activations at random before the cut while training, which a cache cannot repeat "
            "(training.cache_features=true caches it without)"
        )
    return split


def _store(trainer: Any, recipe: Recipe, splits: Splits, split: Split) -> tuple[list[torch.Tensor], str]:
    views = 2 if recipe.data.hflip else 1
    rows = views * len(splits.train) + len(splits.eval)
    dtype = _dtype(recipe, trainer.args.device)
    shapes = [split.inputs[e].leaves[i].shape[1:] for e, i in split.batched_inputs]
    needed = sum(_nbytes(rows, s, dtype) for s in shapes)
    location = _location(recipe.training.cache_storage, needed, trainer.args.device)
    if location != "disk":
        device = trainer.args.device if location == "accelerator" else torch.device("cpu")
        store = [torch.empty((rows, *s), dtype=dtype, device=device) for s in shapes]
        _fill(store, trainer, recipe, splits, split)
        return store, location
    key = _key(trainer, recipe, splits, split, dtype, views)
    folder = cache_root() / hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    state = process_state()
    failure = None
    if state.is_main_process:  # the main process builds; the others wait, then map what it wrote
        try:
            _open_or_build(folder, key, rows, shapes, dtype, trainer, recipe, splits, split)
        except Exception as e:  # every rank must hear of it, or the others would wait at the barrier forever
            failure = e
    if state.num_processes > 1:
        failed = broadcast_object_list([failure is not None])[0]
        if failed and failure is None:
            raise HfTlError("the main process could not build the feature cache; its error is printed above.")
    if failure is not None:
        raise failure
    store = _open(folder, key, rows, shapes, dtype)
    if store is None:
        raise HfTlError(f"the feature cache in {folder} could not be read back after it was written.")
    return store, f"disk: {folder}"


def _open_or_build(folder: Path, key: dict, rows: int, shapes: list, dtype, trainer, recipe, splits, split) -> None:
    """One builder per store: a second run with the same key waits for the first, then reuses its store."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _open(folder, key, rows, shapes, dtype) is not None:
            _say(f"feature cache: reusing {folder}")
            return
        _build_on_disk(folder, key, rows, shapes, dtype, trainer, recipe, splits, split)


def cache_root() -> Path:
    default = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hf_tl" / "features"
    return Path(os.environ.get("HF_TL_CACHE", default))


def _location(choice: str, needed: int, device: torch.device) -> str:
    if choice == "disk" or process_state().num_processes > 1:  # one store on disk, shared by every rank
        return "disk"
    if choice == "auto" and device.type == "cuda" and needed < ACCELERATOR_SHARE * torch.cuda.mem_get_info(device)[0]:
        return "accelerator"  # a quarter: the optimizer, activations and evaluation need the rest
    if choice == "memory" or needed < FREE_SHARE * _free_memory():
        return "memory"
    return "disk"


def _free_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _dtype(recipe: Recipe, device: torch.device) -> torch.dtype:
    """bf16/fp16 features for a bf16/fp16 run on an accelerator; fp32 otherwise (on a CPU: exact)."""
    if device.type == "cpu":
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(recipe.training.precision, torch.float32)


def _key(trainer, recipe: Recipe, splits: Splits, split: Split, dtype: torch.dtype, views: int) -> dict:
    """Everything the features depend on. Any change gives another folder, so a stale store is never read."""
    return {
        "format": FORMAT,
        "model": recipe.model.name,
        "revision": recipe.model.revision,
        "commit": getattr(trainer.model.config, "_commit_hash", None),
        "frozen_weights": _frozen_digest(trainer.model),
        "entries": split.entries,
        "prefix": split.prefix,
        "config": hashlib.sha256(trainer.model.config.to_json_string().encode()).hexdigest(),
        "preprocess": trainer.preprocess.key(),
        "device": trainer.args.device.type,  # the resize runs on uint8 on a CPU, in float on an accelerator
        "image_column": splits.image_column,
        "views": views,
        "train": splits.train._fingerprint,
        "eval": splits.eval._fingerprint,
        "rows": [len(splits.train), len(splits.eval)],
        "dtype": str(dtype),
        "versions": {k: v for k, v in library_versions().items() if k in KEY_LIBRARIES},
    }


def _frozen_digest(model: torch.nn.Module) -> str:
    digest = hashlib.blake2b(digest_size=16)
    tensors = [(n, p) for n, p in model.named_parameters() if not p.requires_grad] + list(model.named_buffers())
    for name, tensor in tensors:
        digest.update(name.encode())
        digest.update(tensor.detach().reshape(-1).cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _open(folder: Path, key: dict, rows: int, shapes: list, dtype: torch.dtype) -> list[torch.Tensor] | None:
    """A complete store with exactly this key, memory-mapped; None if there is none."""
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    if meta.get("key") != json.loads(json.dumps(key)):
        return None
    try:
        return [_mapped(folder / f"part{i}.bin", rows, s, dtype, shared=False) for i, s in enumerate(shapes)]
    except (OSError, RuntimeError):
        return None


def _build_on_disk(folder: Path, key: dict, rows: int, shapes: list, dtype, trainer, recipe, splits, split) -> None:
    """Written beside the final folder and renamed into place when complete and synced: a crash leaves no half.

    Called under the store's lock, so a `.partial-*` folder found here is a dead build's leftover.
    """
    for stale in folder.parent.glob(f"{folder.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    partial = folder.parent / f"{folder.name}.partial-{uuid.uuid4().hex[:8]}"
    partial.mkdir()
    try:
        paths = [partial / f"part{i}.bin" for i in range(len(shapes))]
        for path, shape in zip(paths, shapes, strict=True):
            _allocate(path, _nbytes(rows, shape, dtype))
        store = [_mapped(path, rows, s, dtype, shared=True) for path, s in zip(paths, shapes, strict=True)]
        _fill(store, trainer, recipe, splits, split)
        del store
        (partial / META_FILE).write_text(json.dumps({"key": key, "shapes": [list(s) for s in shapes]}, indent=1))
        sync_tree(partial)
        shutil.rmtree(folder, ignore_errors=True)  # an incomplete or different-key store under this name
        partial.rename(folder)
    except OSError as e:
        shutil.rmtree(partial, ignore_errors=True)
        if disk_full(e, folder.parent):
            gigabytes = sum(_nbytes(rows, s, dtype) for s in shapes) / 2**30
            raise HfTlError(
                f"the disk is full: the feature cache needs {gigabytes:.1f} GB under "
                f"{folder.parent}. Free some space, point HF_TL_CACHE at a larger disk, or set "
                "training.cache_storage=memory (or training.cache_features=false)."
            ) from None
        raise
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _allocate(path: Path, size: int) -> None:
    """Reserve the blocks now: a sparse file on a disk that fills up would end the process with SIGBUS."""
    with open(path, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, size)


def _nbytes(rows: int, shape, dtype: torch.dtype) -> int:
    """The size of one stored tensor: `rows` rows of `shape`."""
    return rows * torch.Size(shape).numel() * torch.tensor([], dtype=dtype).element_size()


def _mapped(path: Path, rows: int, shape, dtype: torch.dtype, shared: bool) -> torch.Tensor:
    if not shared and path.stat().st_size != _nbytes(rows, shape, dtype):
        raise OSError(f"{path} has the wrong size")
    count = rows * torch.Size(shape).numel()
    return torch.from_file(str(path), shared=shared, size=count, dtype=dtype).view(rows, *shape)


def _fill(store: list[torch.Tensor], trainer, recipe: Recipe, splits: Splits, split: Split) -> None:
    """One pass of the frozen prefix over every image (and its mirror image), in eval mode without gradients."""
    model, device = trainer.model, trainer.args.device
    passes = [("train", splits.train, False)]
    if recipe.data.hflip:
        passes.append(("train, mirrored", splits.train, True))
    passes.append(("validation", splits.eval, False))
    batch_size = recipe.training.eval_batch_size or recipe.training.batch_size
    autocast = _dtype(recipe, device)
    was_training = model.training
    model.eval()
    row = 0
    try:
        for name, dataset, mirrored in passes:
            loader = _loader(dataset, splits, batch_size, trainer.args.dataloader_num_workers)
            for batch in tqdm(loader, desc=f"hf_tl: caching frozen features ({name})", leave=False):
                images = to_device(batch["images"], device)
                count = len(images)
                flips = torch.ones(count, dtype=torch.bool) if mirrored else None
                with torch.inference_mode(), torch.autocast(device.type, autocast, enabled=autocast != torch.float32):
                    parts = split.capture(model, trainer.preprocess(images, flips))
                for target, part in zip(store, parts, strict=True):
                    target[row : row + count] = part.to(target.device, target.dtype)
                row += count
    finally:
        model.train(was_training)


def _loader(dataset: Dataset, splits: Splits, batch_size: int, workers: int) -> DataLoader:
    images = dataset.with_transform(image_transform(splits.image_column, splits.label_column))
    return DataLoader(images, batch_size=batch_size, collate_fn=collate_images, num_workers=workers)


def _say(message: str) -> None:
    if process_state().is_main_process:
        print(f"hf_tl: {message}", flush=True)
