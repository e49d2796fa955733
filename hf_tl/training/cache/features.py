"""`training.cache_features`: run the frozen prefix once over the data, then train the rest on its output.

A last-block run of a 12-block model otherwise recomputes, every epoch, eleven blocks whose
output never changes. Here those blocks run once per image (twice with horizontal flip: both
views are kept, from one decoding of the image, and each training step picks the view
`preprocess.draw_flips` draws, exactly as the uncached path would flip), in eval mode without
gradients; validation and the final train-set evaluation read the same store. `prefix_split`
finds the cut from the blocks map and checks on real images that the cached path gives the
uncached logits. A run that stops inside its first epoch caches only the training images its
steps draw (`hf_tl.training.touched`). Under `auto` the cache is also off where it would run the frozen part
for more images than the run does without it (`_check_saves_work`), unless a stored cache is reused.

Where the store lives (`training.cache_storage=auto`): a store already on disk with this run's
key wins; else on the accelerator when it takes under a quarter of the accelerator's memory, in
host memory under a quarter of the machine's (its container's) memory, else on disk under
`$HF_TL_CACHE` (default `$HF_HOME/hf_tl/features`) as memory-mapped files. Total memory, not
what happens to be free, so two identical runs choose alike. A store built in memory that took
long to build (`_worth_keeping`) is also written to disk, where the next run with the same key,
a sweep's next cell say, finds it.

The key holds everything the features depend on: the model and a digest of its frozen weights,
which parameters train, the preprocessing, the dataset fingerprints and rows, the dtype and
library versions, and none of the probe's results: a disk store carries its verified split and
what the dropout check found, so a run that reuses it skips the probe. A store is renamed into
place only when complete, and reused only when every part file still has the checksum recorded
when it was built (else it is rebuilt).
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import xxhash
from accelerate.utils import broadcast_object_list
from datasets import Dataset
from filelock import FileLock
from torch import nn
from torch.utils.data import DataLoader
from transformers import TrainingArguments

from hf_tl import progress
from hf_tl.config.recipe import Recipe, random_inputs
from hf_tl.data.datasets import Splits, collate_images, image_transform
from hf_tl.data.preprocess import Preprocess, to_device
from hf_tl.errors import HfTlError
from hf_tl.inference.loading import inference_loader
from hf_tl.runs.environment import library_versions, process_state
from hf_tl.runs.folder import disk_full, sync_tree
from hf_tl.strategies.registry import STRATEGIES
from hf_tl.training.cache.prefix_split import (
    PROBE_SIZES,
    NotCacheable,
    Split,
    plan_and_verify,
    random_in_training,
    stochastic_prefix,
)
from hf_tl.training.phases import timed

CACHEABLE = tuple(name for name, strategy in STRATEGIES.items() if strategy.cacheable)
KEY_LIBRARIES = ("hf-tl", "torch", "torchvision", "transformers", "timm")  # what computes the features
FORMAT = 3  # 2: the key holds no probe result; meta.json carries the verified split. 3: transparency on white
META_FILE = "meta.json"
PROBE_IMAGES = max(PROBE_SIZES)
MEMORY_SHARE = 0.25  # of the machine's memory a store may take in host memory
ACCELERATOR_SHARE = 0.25  # of the accelerator's memory: the optimizer, activations and evaluation need the rest
CHECKSUM = "xxh3_128"
CHECKSUM_CHUNK = 16 * 2**20
# A store built in memory is also written to disk when its build took at least PERSIST_MIN_SECONDS and
# PERSIST_FACTOR times what writing and syncing it takes on a slow disk (this machine's measured 176 MB/s).
PERSIST_MIN_SECONDS = 10.0
PERSIST_FACTOR = 4.0
SLOW_DISK_BYTES_PER_SECOND = 150e6


@dataclass(frozen=True)
class Source:
    """What the cache needs of the run: the model it runs and feeds, the preprocessing of its images, the Trainer's
    arguments (device, batch sizes, workers, steps) and processes, and which training rows the run draws.

    `drawn_rows` (None: all of them) is asked only when the cache may be used, inside the cache's forked RNG.
    """

    model: nn.Module
    preprocess: Preprocess
    args: TrainingArguments
    processes: int
    drawn_rows: Callable[[], list[int] | None]

    @property
    def device(self) -> torch.device:
        return self.args.device


@dataclass
class FeatureCache:
    """The store, and what the Trainer trains on instead of the images: its datasets, collator and model inputs."""

    split: Split
    model: nn.Module  # the model the split is attached to, until `close`
    store: list[torch.Tensor]  # per cached tensor: rows of the cached training images, their mirrored twins, eval
    train_rows: torch.Tensor  # per training image, its row in the store; -1 where the run never draws the image
    views: int
    train_labels: list[int]
    eval_labels: list[int]
    report: dict[str, Any]

    @property
    def cached_train(self) -> int:
        return int((self.train_rows >= 0).sum())

    @property
    def train_dataset(self) -> CachedRows:
        """Training rows, with their flipped twins: what the Trainer trains on instead of the images."""
        train = self.train_rows
        flipped = torch.where(train >= 0, train + self.cached_train, train) if self.views == 2 else train
        return CachedRows(train, flipped, self.train_labels)

    @property
    def eval_dataset(self) -> CachedRows:
        """Validation rows: what the Trainer evaluates on instead of the images."""
        evals = torch.arange(len(self.eval_labels)) + self.views * self.cached_train
        return CachedRows(evals, evals, self.eval_labels)

    @property
    def collator(self) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
        """Batches of store rows, for the Trainer's data loaders."""
        return collate_rows

    def train_eval_dataset(self) -> CachedRows:
        """The training images the run drew, unflipped: for the train-set metrics after training."""
        drawn = (self.train_rows >= 0).nonzero().flatten()
        rows = self.train_rows[drawn]
        return CachedRows(rows, rows, [self.train_labels[i] for i in drawn.tolist()])

    def inputs_for(self, batch: dict[str, torch.Tensor], flips: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Feed the batch's cached tensors to the entry; the model gets placeholder pixels it never reads."""
        rows = batch["cache_row"] if flips is None else torch.where(flips, batch["flipped_row"], batch["cache_row"])
        if self.cached_train < len(self.train_rows) and bool((rows < 0).any()):
            raise RuntimeError(
                "a training step drew an image the feature cache left out (hf_tl.training.touched is wrong)"
            )
        device = batch["labels"].device
        self.split.feed.leaves = [
            part[rows.to(part.device)].to(device, dtype, non_blocking=True)
            for part, dtype in zip(self.store, self.split.input_dtypes, strict=True)
        ]
        return {"pixel_values": self.split.placeholder_pixels(len(rows), device), "labels": batch["labels"]}

    def reset(self) -> None:
        """Drop cached inputs a forward that raised may have left behind, so the next images run the whole model."""
        self.split.feed.leaves = None

    def close(self) -> None:
        """Give the model back its own forward, before it is saved."""
        self.split.detach(self.model)


class CachedRows(torch.utils.data.Dataset):
    def __init__(self, rows: torch.Tensor, flipped: torch.Tensor, labels: list[int]) -> None:
        self.rows, self.flipped, self.labels = rows, flipped, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, int]:
        return {"cache_row": int(self.rows[i]), "flipped_row": int(self.flipped[i]), "labels": self.labels[i]}


def collate_rows(examples: list[dict]) -> dict[str, torch.Tensor]:
    return {key: torch.tensor([e[key] for e in examples]) for key in ("cache_row", "flipped_row", "labels")}


@dataclass
class Plan:
    """What a store holds and where it is looked for: decided before any probe."""

    key: dict
    folder: Path
    cached: list[int] | None  # the training rows cached (None: all), in store order
    rows: int  # of the store: cached training images, times the views, plus the validation images
    views: int
    dtype: torch.dtype

    def train_rows(self, num_train: int) -> torch.Tensor:
        if self.cached is None:
            return torch.arange(num_train)
        rows = torch.full((num_train,), -1, dtype=torch.long)
        rows[torch.tensor(self.cached, dtype=torch.long)] = torch.arange(len(self.cached))
        return rows


def prepare(source: Source, recipe: Recipe, splits: Splits) -> FeatureCache | None:
    """Build or reuse the store and attach it to the model; None (and why, printed) where the cache is off.

    The Trainer then trains on the cache's datasets, collator and inputs (`HfTlTrainer.use_feature_cache`).
    """
    mode = recipe.training.cache_features
    if mode == "false":
        return None
    devices = [] if source.device.type == "cpu" else [source.device]
    # Data loaders draw their seeds from the global generator: fork it, so the training draws the same
    # shuffles and flips with the cache as without it.
    with torch.random.fork_rng(devices, device_type=source.device.type):
        return _prepare(source, recipe, splits, mode)


def _prepare(source: Source, recipe: Recipe, splits: Splits, mode: str) -> FeatureCache | None:
    started = time.perf_counter()
    try:
        if reason := random_input_reason(recipe):
            raise NotCacheable(reason)
        if recipe.strategy.kind not in CACHEABLE:
            raise NotCacheable(
                f"strategy {recipe.strategy.kind} trains inside every block (cached: {', '.join(CACHEABLE)})"
            )
        with timed("cache_probe"):  # the key (a digest of the frozen weights), then the split: stored or probed
            plan = _plan(source, recipe, splits)
            stored = recipe.training.cache_storage != "memory" and (plan.folder / META_FILE).exists()
            if mode == "auto" and not stored:
                _check_saves_work(source, recipe, plan, len(splits.train), len(splits.eval))
            split, random_before_cut, probed = _split(source, recipe, splits, plan, mode)
    except NotCacheable as reason:
        if mode == "true":
            raise HfTlError(f"training.cache_features=true, but {reason}. Use auto or false.") from None
        _say(f"feature cache off: {reason}")
        return None
    meta = {"split": split.to_json(), "random_before_cut": random_before_cut}
    with timed("cache_build"):
        store, report = _store(source, recipe, splits, split, plan, meta)
    cache = FeatureCache(
        split,
        source.model,
        store,
        plan.train_rows(len(splits.train)),
        plan.views,
        list(splits.train[splits.label_column]),
        list(splits.eval[splits.label_column]),
        {"used": True, "entries": split.entries, **report, "probe": "ran" if probed else "read from the store"},
    )
    cache.report["cached_train_images"] = cache.cached_train
    cache.report["prepare_seconds"] = round(time.perf_counter() - started, 3)
    split.attach(source.model)
    gigabytes = sum(part.numel() * part.element_size() for part in store) / 2**30
    drawn = cache.cached_train < len(splits.train)
    partial = f"the {cache.cached_train} of {len(splits.train)} training images the run draws; " if drawn else ""
    _say(
        f"feature cache on: training starts at {', '.join(split.entries)}; {partial}{gigabytes:.2f} GB of features "
        f"({report['location']}), ready in {cache.report['prepare_seconds']:.1f} s"
    )
    return cache


def random_input_reason(recipe: Recipe) -> str | None:
    """Why the cache cannot hold this run's inputs: a random augmentation or mixing; None where it can."""
    random = random_inputs(recipe)
    if not random:
        return None
    return f"{' and '.join(random)} {'change' if len(random) > 1 else 'changes'} the images at every step"


def off_report(recipe: Recipe) -> dict:
    """metrics.json's `feature_cache` where the cache is off; with the reason when the augmentation turned it off."""
    reason = random_input_reason(recipe) if recipe.training.cache_features == "auto" else None
    return {"used": False, "reason": reason} if reason else {"used": False}


def views_of(recipe: Recipe) -> int:
    """Training views cached per image: both flips under data.augment=flip, else the image as it is."""
    return 2 if recipe.data.augment == "flip" else 1


def _plan(source: Source, recipe: Recipe, splits: Splits) -> Plan:
    views = views_of(recipe)
    cached = source.drawn_rows()
    dtype = _dtype(recipe, source.device)
    key = _key(source, recipe, splits, dtype, views, cached)
    folder = cache_root() / hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    rows = views * (len(splits.train) if cached is None else len(cached)) + len(splits.eval)
    return Plan(key, folder, cached, rows, views, dtype)


def _check_saves_work(source: Source, recipe: Recipe, plan: Plan, num_train: int, num_eval: int) -> None:
    """NotCacheable when the cache would run the frozen part for more images than this run does without it.

    Without the cache the frozen part runs for every training image drawn, every image the train-set
    metrics score, and every validation image at each evaluation (one per epoch, and the final one);
    with it, once per view of each cached training image and once per validation image. The one case
    where that is more: a single epoch with flips (both views of every image) and no train-set metrics.
    """
    cached = num_train if plan.cached is None else len(plan.cached)
    args = source.args
    if args.max_steps > 0:
        step = args.train_batch_size * args.gradient_accumulation_steps * source.processes
        epochs = args.max_steps * step / num_train
    else:
        epochs = args.num_train_epochs
    drawn = cached if plan.cached is not None else epochs * num_train
    evaluations = max(1, math.ceil(epochs)) + 1
    without = drawn + (cached if recipe.training.train_metrics else 0) + evaluations * num_eval
    with_cache = plan.views * cached + num_eval
    if with_cache >= without:
        raise NotCacheable(
            f"it would run the frozen part for {with_cache:,.0f} images, {without:,.0f} without it ({epochs:g} "
            f"epoch(s), {plan.views} views per training image): no saving in this run "
            "(training.cache_features=true caches anyway)"
        )


def _split(source: Source, recipe: Recipe, splits: Splits, plan: Plan, mode: str) -> tuple[Split, str | None, bool]:
    """The verified split, where the frozen part acts at random in training (or None), and whether a probe ran.

    A store on disk with this key carries both from the run that built it: then nothing is probed.
    """
    stored = _stored_meta(plan) if recipe.training.cache_storage != "memory" else None
    split = Split.from_json(stored["split"], source.device) if stored and stored.get("split") else None
    if split is not None:
        random_before_cut, probed = stored.get("random_before_cut"), False
    else:
        split, random_before_cut = _probe(source, splits)
        probed = True
    if mode == "auto" and random_before_cut:
        raise NotCacheable(
            f"{random_before_cut} drops activations at random before the cut while training, which a cache cannot "
            "repeat (training.cache_features=true caches it without)"
        )
    return split, random_before_cut, probed


def _probe(source: Source, splits: Splits) -> tuple[Split, str | None]:
    """Plan the cut on real images, verify it, and look for dropout before it."""
    images = splits.eval.select(range(min(PROBE_IMAGES, len(splits.eval)))).with_transform(
        image_transform(splits.image_column, splits.label_column)
    )
    batch = collate_images([images[i % len(images)] for i in range(PROBE_IMAGES)])
    device = source.device

    def pixels(n: int) -> torch.Tensor:
        return source.preprocess(to_device(batch["images"][:n], device))

    split, eval_inputs = plan_and_verify(source.model, pixels)
    # Dropout modules are found by their rate; dropout the model's code applies by itself shows in a training pass.
    stochastic = stochastic_prefix(source.model, split)
    if stochastic:
        return split, stochastic[0]
    if random_in_training(source.model, split, pixels(PROBE_SIZES[1]), eval_inputs):
        return split, "the frozen part"
    return split, None


def _stored_meta(plan: Plan) -> dict | None:
    try:
        meta = json.loads((plan.folder / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    return meta if meta.get("key") == json.loads(json.dumps(plan.key)) else None


def _store(source: Source, recipe: Recipe, splits: Splits, split: Split, plan: Plan, meta: dict) -> tuple[list, dict]:
    """The filled store and what to report of it: where it lives, whether it was reused or kept for later runs."""
    shapes = [split.inputs[e].leaves[i].shape[1:] for e, i in split.batched_inputs]
    needed = sum(_nbytes(plan.rows, s, plan.dtype) for s in shapes)
    choice = recipe.training.cache_storage
    location = _location(choice, needed, source.device, (plan.folder / META_FILE).exists())
    if location == "disk":
        store, reused = _disk_store(source, recipe, splits, split, plan, shapes, meta)
        report = {"location": f"disk: {plan.folder}", "reused": reused, "storage": choice, "views": plan.views}
        return store, report if reused else {**report, "build_seconds": meta.get("build_seconds")}
    device = source.device if location == "accelerator" else torch.device("cpu")
    store = [torch.empty((plan.rows, *s), dtype=plan.dtype, device=device) for s in shapes]
    started = time.perf_counter()
    _fill(store, source, recipe, splits, split, plan.cached)
    seconds = time.perf_counter() - started
    report = {"location": location, "reused": False, "storage": choice, "views": plan.views}
    report["build_seconds"] = round(seconds, 3)
    if choice == "auto" and _worth_keeping(seconds, needed):
        report["kept_on_disk"] = _keep(store, plan, shapes, {**meta, "build_seconds": round(seconds, 3)})
    return store, report


def _location(choice: str, needed: int, device: torch.device, on_disk: bool) -> str:
    """Where the store lives. Decided from the machine's total memory, never what is free at the moment."""
    if choice == "memory":
        return "memory"
    if choice == "disk" or process_state().num_processes > 1 or on_disk:  # shared by every rank; or reused
        return "disk"
    if device.type == "cuda" and needed < ACCELERATOR_SHARE * torch.cuda.get_device_properties(device).total_memory:
        return "accelerator"
    if needed < MEMORY_SHARE * _machine_memory():
        return "memory"
    return "disk"


def _machine_memory() -> int:
    """The memory this process may use: the machine's, or its container's limit where that is lower."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):  # cgroup v2, v1
        try:
            value = Path(limit).read_text().strip()
        except OSError:
            continue
        if value.isdigit():
            total = min(total, int(value))
    return total


def _worth_keeping(build_seconds: float, nbytes: int) -> bool:
    """Whether writing an in-memory store to disk for later runs costs little against rebuilding it."""
    return build_seconds >= max(PERSIST_MIN_SECONDS, PERSIST_FACTOR * nbytes / SLOW_DISK_BYTES_PER_SECOND)


def _keep(store: list[torch.Tensor], plan: Plan, shapes: list, meta: dict) -> str | None:
    """Write an in-memory store to disk for the next run with this key; a failure costs this run nothing."""
    try:
        plan.folder.parent.mkdir(parents=True, exist_ok=True)
        with _lock(plan.folder):
            if (plan.folder / META_FILE).exists():
                return str(plan.folder)  # another run kept it meanwhile

            def copy(targets: list[torch.Tensor]) -> None:
                for target, part in zip(targets, store, strict=True):
                    target.copy_(part)

            _write_store(plan, shapes, meta, copy)
    except (OSError, HfTlError) as e:
        _say(f"feature cache: could not keep the features on disk for later runs ({e}); this run goes on")
        return None
    _say(f"feature cache: kept on disk for later runs with the same key: {plan.folder}")
    return str(plan.folder)


def _disk_store(
    source: Source, recipe: Recipe, splits: Splits, split: Split, plan: Plan, shapes: list, meta: dict
) -> tuple[list, bool]:
    state = process_state()
    failure, reused = None, False
    if state.is_main_process:  # the main process builds; the others wait, then map what it wrote
        try:
            reused = _open_or_build(source, recipe, splits, split, plan, shapes, meta)
        except Exception as e:  # every rank must hear of it, or the others would wait at the barrier forever
            failure = e
    if state.num_processes > 1:
        failed = broadcast_object_list([failure is not None])[0]
        if failed and failure is None:
            raise HfTlError("the main process could not build the feature cache; its error is printed above.")
    if failure is not None:
        raise failure
    store = _open(plan.folder, plan.key, plan.rows, shapes, plan.dtype)
    if store is None:
        raise HfTlError(f"the feature cache in {plan.folder} could not be read back after it was written.")
    return store, reused


def _open_or_build(
    source: Source, recipe: Recipe, splits: Splits, split: Split, plan: Plan, shapes: list, meta: dict
) -> bool:
    """One builder per store: a second run with the same key waits for the first, then reuses its store.

    True when a complete, undamaged store was there already.
    """
    folder = plan.folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _lock(folder):
        if folder.exists():
            damage = _damage(folder, plan.key, plan.rows, shapes, plan.dtype)
            if damage is None:
                _say(f"feature cache: reusing {folder}")
                return True
            _say(f"feature cache: {folder} is damaged ({damage}); rebuilding")
        started = time.perf_counter()

        def fill(store: list[torch.Tensor]) -> None:
            _fill(store, source, recipe, splits, split, plan.cached)
            meta["build_seconds"] = round(time.perf_counter() - started, 3)

        try:
            _write_store(plan, shapes, meta, fill)
        except OSError as e:
            if disk_full(e, folder.parent):
                gigabytes = sum(_nbytes(plan.rows, s, plan.dtype) for s in shapes) / 2**30
                raise HfTlError(
                    f"the disk is full: the feature cache needs {gigabytes:.1f} GB under "
                    f"{folder.parent}. Free some space, point HF_TL_CACHE at a larger disk, or set "
                    "training.cache_storage=memory (or training.cache_features=false)."
                ) from None
            raise
    return False


def _lock(folder: Path) -> FileLock:
    """The store's lock, beside it: one process at a time checks, builds or keeps it; the others wait."""
    return FileLock(folder.parent / f"{folder.name}.lock")


def cache_root() -> Path:
    default = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hf_tl" / "features"
    return Path(os.environ.get("HF_TL_CACHE", default))


def _dtype(recipe: Recipe, device: torch.device) -> torch.dtype:
    """bf16/fp16 features for a bf16/fp16 run on an accelerator; fp32 otherwise (on a CPU: exact)."""
    if device.type == "cpu":
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(recipe.training.precision, torch.float32)


def _key(
    source: Source, recipe: Recipe, splits: Splits, dtype: torch.dtype, views: int, cached: list[int] | None
) -> dict:
    """Everything the features depend on. Any change gives another folder, so a stale store is never read.

    Nothing here comes from the probe: the cut follows from the model, its code (the versions) and which
    parameters train, so a run can find its store, and the verified split it carries, before probing.
    """
    model = source.model
    trainable = sorted(name for name, p in model.named_parameters() if p.requires_grad)
    return {
        "format": FORMAT,
        "model": recipe.model.name,
        "revision": recipe.model.revision,
        "commit": getattr(model.config, "_commit_hash", None),
        "frozen_weights": _frozen_digest(model),
        "trainable": hashlib.sha256("\n".join(trainable).encode()).hexdigest(),
        "config": hashlib.sha256(model.config.to_json_string().encode()).hexdigest(),
        "preprocess": source.preprocess.key(),
        "device": source.device.type,  # the resize runs on uint8 on a CPU, in float on an accelerator
        "image_column": splits.image_column,
        "views": views,
        "train": splits.train._fingerprint,
        "eval": splits.eval._fingerprint,
        "rows": [len(splits.train), len(splits.eval)],
        "train_rows": None if cached is None else hashlib.sha256(json.dumps(cached).encode()).hexdigest(),
        "dtype": str(dtype),
        "versions": {k: v for k, v in library_versions().items() if k in KEY_LIBRARIES},
    }


def _frozen_digest(model: torch.nn.Module) -> str:
    """xxh3-128 over every frozen parameter and buffer, names included (a few GB a second)."""
    digest = xxhash.xxh3_128()
    tensors = [(n, p) for n, p in model.named_parameters() if not p.requires_grad] + list(model.named_buffers())
    for name, tensor in tensors:
        digest.update(name.encode())
        digest.update(tensor.detach().reshape(-1).cpu().contiguous().view(torch.uint8).numpy())
    return digest.hexdigest()


def _damage(folder: Path, key: dict, rows: int, shapes: list, dtype: torch.dtype) -> str | None:
    """What is wrong with the store in `folder`, or None when it has this key and every part its size and checksum.

    Every part is read in full: that costs what one epoch's reads cost, and no bit goes unchecked,
    where recomputing a sample of rows would miss a damaged page elsewhere.
    """
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError):
        return f"no readable {META_FILE}"
    if meta.get("key") != json.loads(json.dumps(key)):
        return f"another key in {META_FILE}"
    for i, shape in enumerate(shapes):
        path = folder / f"part{i}.bin"
        expected = meta.get("checksums", {}).get(path.name)
        try:
            if path.stat().st_size != _nbytes(rows, shape, dtype):
                return f"{path.name} has the wrong size"
            if expected is None:
                return "built without checksums"
            if _checksum(path) != expected:
                return "checksum mismatch"
        except OSError as e:
            return f"{path.name} unreadable: {e.strerror}"
    return None


def _checksum(path: Path) -> str:
    """xxh3-128 of the file in 16 MB reads: 0.1-0.2 s a GB from memory here (blake2b: 1.4 s), far below a rebuild."""
    digest = xxhash.xxh3_128()
    buffer = bytearray(CHECKSUM_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while count := f.readinto(buffer):
            digest.update(view[:count])
    return f"{CHECKSUM}:{digest.hexdigest()}"


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


def _write_store(plan: Plan, shapes: list, meta: dict, fill: Callable[[list[torch.Tensor]], None]) -> None:
    """Written beside the final folder and renamed into place when complete and synced: a crash leaves no half.

    Called under the store's lock, so a `.partial-*` folder found here is a dead build's leftover.
    """
    folder = plan.folder
    for stale in folder.parent.glob(f"{folder.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    partial = folder.parent / f"{folder.name}.partial-{uuid.uuid4().hex[:8]}"
    partial.mkdir()
    try:
        paths = [partial / f"part{i}.bin" for i in range(len(shapes))]
        for path, shape in zip(paths, shapes, strict=True):
            _allocate(path, _nbytes(plan.rows, shape, plan.dtype))
        store = [_mapped(path, plan.rows, s, plan.dtype, shared=True) for path, s in zip(paths, shapes, strict=True)]
        fill(store)
        del store
        checksums = {path.name: _checksum(path) for path in paths}  # of what the file holds, read back once
        written = {"key": plan.key, "shapes": [list(s) for s in shapes], "checksums": checksums, **meta}
        (partial / META_FILE).write_text(json.dumps(written, indent=1))
        sync_tree(partial)
        shutil.rmtree(folder, ignore_errors=True)  # an incomplete or different-key store under this name
        partial.rename(folder)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _allocate(path: Path, size: int) -> None:
    """Reserve the blocks now: a sparse file on a disk that fills up would end the process with SIGBUS.

    Where the OS has no posix_fallocate (Windows, macOS), the free space is checked first, so a full disk
    still fails here, before the build; the file is then sized (NTFS allocates it, others may keep it sparse).
    """
    with open(path, "wb") as f:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(f.fileno(), 0, size)
            return
        if shutil.disk_usage(path.parent).free < size:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        f.truncate(size)


def _nbytes(rows: int, shape, dtype: torch.dtype) -> int:
    """The size of one stored tensor: `rows` rows of `shape`."""
    return rows * torch.Size(shape).numel() * torch.tensor([], dtype=dtype).element_size()


def _mapped(path: Path, rows: int, shape, dtype: torch.dtype, shared: bool) -> torch.Tensor:
    if not shared and path.stat().st_size != _nbytes(rows, shape, dtype):
        raise OSError(f"{path} has the wrong size")
    count = rows * torch.Size(shape).numel()
    return torch.from_file(str(path), shared=shared, size=count, dtype=dtype).view(rows, *shape)


def _fill(
    store: list[torch.Tensor], source: Source, recipe: Recipe, splits: Splits, split: Split, cached: list[int] | None
) -> None:
    """One pass of the frozen prefix over every image, in eval mode without gradients.

    Each training image is decoded once; with horizontal flip its mirror image is computed from the same
    decoded batch and stored `len(train)` rows further on. Validation images follow both.
    """
    model, device = source.model, source.device
    train = splits.train if cached is None else splits.train.select(cached)
    views = views_of(recipe)
    batch_size = recipe.training.eval_batch_size or recipe.training.batch_size
    autocast = _dtype(recipe, device)
    workers = source.args.dataloader_num_workers
    was_training = model.training
    model.eval()

    def put(row: int, images: torch.Tensor, flips: torch.Tensor | None) -> None:
        with torch.inference_mode(), torch.autocast(device.type, autocast, enabled=autocast != torch.float32):
            parts = split.capture(model, source.preprocess(images, flips))
        for target, part in zip(store, parts, strict=True):
            target[row : row + len(part)] = part.to(target.device, target.dtype)

    try:
        row = 0
        name = "train, both views" if views == 2 else "train"
        for batch in progress.bar(
            _loader(train, splits, batch_size, workers), desc=f"hf_tl: caching ({name})", leave=False
        ):
            images = to_device(batch["images"], device)
            put(row, images, None)
            if views == 2:
                put(len(train) + row, images, torch.ones(len(batch["labels"]), dtype=torch.bool))
            row += len(batch["labels"])
        row = views * len(train)
        for batch in progress.bar(
            _loader(splits.eval, splits, batch_size, workers), desc="hf_tl: caching (validation)", leave=False
        ):
            put(row, to_device(batch["images"], device), None)
            row += len(batch["labels"])
    finally:
        model.train(was_training)


def _loader(dataset: Dataset, splits: Splits, batch_size: int, workers: int) -> DataLoader:
    """The loader eval and analyze read images with: the frozen prefix sees what inference sees."""
    return inference_loader(dataset, splits.image_column, batch_size, workers, splits.label_column)


def _say(message: str) -> None:
    if process_state().is_main_process:
        progress.write(f"hf_tl: {message}")
