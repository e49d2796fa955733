"""Where a model's frozen prefix ends, and how to run the rest of it on the prefix's cached output.

The cut is taken from the blocks map (`hf_tl.models.families.layout`): the first block that holds a
trainable parameter, or the heads for a linear probe. The inputs of that "entry" module are what
gets cached. Which modules form the prefix is read from one traced forward pass, so it holds
for any family without per-family forward code: the prefix is every module that has finished
before the entry starts. While the cache feeds the model, each prefix module returns zeros of the
shape it returned in the trace (nothing is computed), and a pre-hook hands the entry its cached
inputs. `plan_and_verify` checks on real images that this gives the uncached logits; where a
model's code reads prefix values by another route, it does not, and the cache is not used.
The whole probe is two traced forward passes (2 and 3 images) and one pass of the part after the
cut; `Split.to_json` lets a feature store carry the verified split, so a run reusing it probes nothing.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import nn

from hf_tl.models.families import Layout, layout
from hf_tl.models.module_tree import under

PROBE_SIZES = (2, 3)  # two batch sizes tell which tensor dimensions follow the batch


class NotCacheable(Exception):
    """Why this model and strategy cannot train on cached prefix features."""


@dataclass
class Shape:
    """A traced tensor: its shape with the batch dimension marked, its dtype; or any other value as is."""

    shape: tuple[int, ...] | None = None
    batched: bool = False
    dtype: torch.dtype | None = None
    value: Any = None

    def make(self, batch_size: int, device: torch.device) -> Any:
        if self.shape is None:
            return self.value
        shape = (batch_size, *self.shape[1:]) if self.batched else self.shape
        return torch.zeros((), dtype=self.dtype, device=device).expand(shape)


@dataclass
class Call:
    """One module call traced twice: its inputs (for an entry) or its output (for a prefix module)."""

    spec: pytree.TreeSpec
    leaves: list[Shape]
    constants: list[Any] = field(default_factory=list)  # non-batched input leaves, as traced


class Feed:
    """The cached entry inputs of the current batch, or None while the model sees images."""

    def __init__(self) -> None:
        self.leaves: list[torch.Tensor] | None = None

    @property
    def batch_size(self) -> int:
        return self.leaves[0].shape[0]


@dataclass
class Split:
    entries: list[str]  # the modules whose inputs are cached, in call order
    prefix: list[str]  # the largest frozen modules that finish before the first entry starts
    inputs: dict[str, Call]  # per entry
    outputs: dict[str, Call]  # per prefix module
    pixel_shape: tuple[int, ...]
    feed: Feed = field(default_factory=Feed)
    _handles: list[Any] = field(default_factory=list)
    _own_forward: dict[str, Any] = field(default_factory=dict)

    @property
    def input_dtypes(self) -> list[torch.dtype]:
        """The dtype each cached tensor had in the traced (fp32) forward: stored bf16 is fed back as that."""
        return [self.inputs[e].leaves[i].dtype for e, i in self.batched_inputs]

    @property
    def batched_inputs(self) -> list[tuple[str, int]]:
        """(entry, leaf index) of every cached tensor, in storage order."""
        return [(e, i) for e in self.entries for i, s in enumerate(self.inputs[e].leaves) if s.batched]

    def capture(self, model: nn.Module, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """The entries' batched inputs for these images; the model stops as soon as it has them."""
        found: dict[tuple[str, int], torch.Tensor] = {}
        last = self.entries[-1]

        def grab(name: str) -> Callable:
            def hook(module, args, kwargs):
                leaves = pytree.tree_flatten((args, kwargs))[0]
                found.update({(name, i): leaves[i] for n, i in self.batched_inputs if n == name})
                if name == last:
                    raise _Captured

            return hook

        modules = dict(model.named_modules())
        handles = [modules[e].register_forward_pre_hook(grab(e), with_kwargs=True) for e in self.entries]
        try:
            model(pixel_values=pixel_values)
        except _Captured:
            pass
        finally:
            for handle in handles:
                handle.remove()
        return [found[key] for key in self.batched_inputs]

    def attach(self, model: nn.Module) -> None:
        """Prefix modules and entries read the feed whenever it holds a batch; otherwise they run as usual."""
        modules = dict(model.named_modules())
        for name in self.prefix:
            module = modules[name]
            self._own_forward[name] = module.__dict__.get("forward")  # e.g. accelerate's offload hook
            module.forward = _placeholder(module.forward, self.outputs[name], self.feed)
        for name in self.entries:
            hook = _from_feed(self.inputs[name], self.feed, self._offsets()[name], last=name == self.entries[-1])
            self._handles.append(modules[name].register_forward_pre_hook(hook, with_kwargs=True))

    def detach(self, model: nn.Module) -> None:
        modules = dict(model.named_modules())
        for name in self.prefix:
            own = self._own_forward.pop(name, None)
            if own is None:
                modules[name].__dict__.pop("forward", None)
            else:
                modules[name].forward = own
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.feed.leaves = None

    def placeholder_pixels(self, batch_size: int, device: torch.device) -> torch.Tensor:
        return torch.zeros((), device=device).expand(batch_size, *self.pixel_shape[1:])

    def verify(self, model: nn.Module, pixel_values: torch.Tensor) -> None:
        """The fed model must give the logits of the whole model on these images, else NotCacheable."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                expected = model(pixel_values=pixel_values).logits
                leaves = self.capture(model, pixel_values)
        finally:
            model.train(was_training)
        self.compare(model, leaves, expected)

    def compare(self, model: nn.Module, leaves: list[torch.Tensor], expected: torch.Tensor) -> None:
        """The model fed these entry inputs must give `expected`, the whole model's logits, else NotCacheable."""
        was_training = model.training
        model.eval()
        self.attach(model)
        try:
            with torch.no_grad():
                self.feed.leaves = list(leaves)
                got = model(pixel_values=self.placeholder_pixels(len(expected), expected.device)).logits
        except Exception as e:  # the model's code used a placeholder in a way zeros cannot stand in for
            raise NotCacheable(
                f"running the rest of the model on cached inputs failed ({type(e).__name__}: {e})"
            ) from None
        finally:
            self.detach(model)
            model.train(was_training)
        gap = (got.float() - expected.float()).abs().max().item()
        if gap > 1e-5 * max(1.0, expected.abs().max().item()):
            raise NotCacheable(
                f"this model's code reads the frozen part's values past {self.entries[0]} (logits differ by {gap:.2e})"
            )

    def to_json(self) -> dict | None:
        """The split as JSON, for a feature store to carry, so a run reusing the store needs no probe.

        None when some traced value has no JSON form (then a reusing run probes the model again).
        """
        try:
            return {
                "entries": self.entries,
                "prefix": self.prefix,
                "pixel_shape": list(self.pixel_shape),
                "inputs": {name: _call_to_json(call) for name, call in self.inputs.items()},
                "outputs": {name: _call_to_json(call) for name, call in self.outputs.items()},
            }
        except (TypeError, ValueError, NotImplementedError, KeyError):
            return None

    @classmethod
    def from_json(cls, data: dict, device: torch.device) -> Split | None:
        """The split `to_json` wrote; None where it cannot be read back here (then the model is probed again)."""
        try:
            return cls(
                list(data["entries"]),
                list(data["prefix"]),
                {name: _call_from_json(call, device) for name, call in data["inputs"].items()},
                {name: _call_from_json(call, device) for name, call in data["outputs"].items()},
                tuple(data["pixel_shape"]),
            )
        except (TypeError, ValueError, NotImplementedError, KeyError, AttributeError, RuntimeError):
            return None

    def _offsets(self) -> dict[str, dict[int, int]]:
        """For each entry, which feed position holds each of its batched leaves."""
        offsets: dict[str, dict[int, int]] = {}
        for position, (name, leaf) in enumerate(self.batched_inputs):
            offsets.setdefault(name, {})[leaf] = position
        return offsets


class _Captured(Exception):
    pass


def plan(model: nn.Module, pixels: Callable[[int], torch.Tensor]) -> Split:
    """The split of this model (its trainable parameters already chosen); `pixels(n)` gives n real images."""
    return _plan(model, pixels)[0]


def plan_and_verify(model: nn.Module, pixels: Callable[[int], torch.Tensor]) -> tuple[Split, list[torch.Tensor]]:
    """The split, verified on real images, and the cut's inputs for `pixels(PROBE_SIZES[1])` in eval mode.

    Two traced forward passes and one pass of the part after the cut: the second trace's logits and
    entry inputs serve the verification, so no pass runs twice.
    """
    split, traced = _plan(model, pixels)
    leaves = _batched_leaves(split, traced["inputs"])
    split.compare(model, leaves, traced["logits"])
    return split, leaves


def _plan(model: nn.Module, pixels: Callable[[int], torch.Tensor]) -> tuple[Split, dict]:
    parameters = {name: p.requires_grad for name, p in model.named_parameters()}
    trainable = [name for name, trains in parameters.items() if trains]
    if not trainable:
        raise NotCacheable("nothing trains")
    parts = layout(model)
    first_pixels = pixels(PROBE_SIZES[0])
    # The first trace keeps, on the meta device, the inputs of every module that can be an entry.
    small = _trace(model, first_pixels, _candidates(parts), on_meta=True)
    order, starts, ends = small["order"], small["starts"], small["ends"]
    owners = sorted({name.rpartition(".")[0] for name in trainable}, key=lambda o: starts.get(o, [10**9])[0])
    entries = _entries(parts, parameters, owners[0])
    missing = [e for e in entries if e not in small["inputs"]]
    if missing:
        raise NotCacheable(f"{missing[0]!r} is not called in the forward pass")
    large = _trace(model, pixels(PROBE_SIZES[1]), entries, on_meta=False)
    entries.sort(key=lambda e: starts[e][0])
    first = starts[entries[0]][0]
    early = [o for o in owners if starts.get(o, [first])[0] < first]
    if early:
        raise NotCacheable(
            f"parameters of {early[0]!r} train but run before {entries[0]!r}: the frozen part is no prefix"
        )
    prefix = _largest(
        [n for n in order if n and all(e < first for e in ends[n]) and not any(under(x, [n]) for x in entries)]
    )
    if not prefix:
        raise NotCacheable(f"nothing frozen runs before {entries[0]!r}")
    if any(len(starts[n]) != 1 for n in prefix + entries):
        raise NotCacheable("a frozen module or the entry runs more than once per forward")
    split = Split(
        entries,
        prefix,
        {e: _call(small["inputs"][e], large["inputs"][e], keep_constants=True) for e in entries},
        {p: _call(small["outputs"][p], large["outputs"][p]) for p in prefix},
        tuple(first_pixels.shape),
    )
    return split, large


def _candidates(parts: Layout) -> set[str]:
    """Every module `_entries` may choose: units, blocks, final norms, heads."""
    return {n for group in parts.units + parts.blocks for n in group} | set(parts.norm) | set(parts.heads)


def _batched_leaves(split: Split, inputs: dict[str, Any]) -> list[torch.Tensor]:
    flat = {e: pytree.tree_flatten(inputs[e])[0] for e in split.entries}
    return [flat[e][i] for e, i in split.batched_inputs]


def random_in_training(
    model: nn.Module, split: Split, pixel_values: torch.Tensor, eval_inputs: list[torch.Tensor]
) -> bool:
    """Whether what enters the cut in training mode differs from what the cache stores (eval mode).

    Frozen norms stay in eval mode (the strategies pin them), so any difference is dropout or another
    random or training-only path before the cut, also one written as a number in a model's own code
    rather than as a module, which `stochastic_prefix` cannot see. One training-mode pass, compared
    with the eval-mode inputs the probe's trace already holds for the same images.
    """
    was_training = model.training
    model.train()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            trained = split.capture(model, pixel_values)
    finally:
        model.train(was_training)
    return any(not torch.equal(a, b) for a, b in zip(trained, eval_inputs, strict=True))


def stochastic_prefix(model: nn.Module, split: Split) -> list[str]:
    """Frozen modules that would act differently in training (dropout, stochastic depth): caching is then not exact."""
    modules = dict(model.named_modules())
    found = []
    for name in split.prefix:
        for sub_name, module in modules[name].named_modules(prefix=name):
            rate = getattr(module, "p", None) if isinstance(module, nn.modules.dropout._DropoutNd) else None
            rate = rate if rate is not None else getattr(module, "drop_prob", getattr(module, "prob", None))
            if isinstance(rate, (int, float)) and rate > 0:
                found.append(sub_name)
    return found


def _entries(parts: Layout, parameters: dict[str, bool], first_owner: str) -> list[str]:
    """The module of the blocks map where training starts: its inputs are what gets cached.

    A unit that trains whole (a CNN stage for last_block) is taken whole, since the blocks inside
    some stages pass lists between them; else the finest block holding the first module to train.
    For a linear probe, every trainable head.
    """

    def trains_whole(name: str) -> bool:
        return all(trains for p, trains in parameters.items() if under(p, [name]))

    units = [name for group in parts.units for name in group]
    blocks = [name for group in parts.blocks for name in group]
    candidates = [n for n in units if trains_whole(n)] + blocks + units + parts.norm
    for name in candidates:
        if under(first_owner, [name]):
            return [name]
    heads = [h for h in parts.heads if any(trains and under(p, [h]) for p, trains in parameters.items())]
    if any(under(first_owner, [h]) for h in heads):
        return heads
    raise NotCacheable(f"{first_owner or 'the model'!r} trains but is no block, final norm or head of the blocks map")


def _trace(model: nn.Module, pixel_values: torch.Tensor, record: Collection[str], on_meta: bool) -> dict:
    """Call order, start/end event indices, the inputs of the modules in `record`, module outputs and the logits
    of one forward pass. Outputs are kept on the meta device; recorded inputs too with `on_meta`, else copied."""
    order: list[str] = []
    starts: dict[str, list[int]] = {}
    ends: dict[str, list[int]] = {}
    inputs: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    clock = iter(range(10**9))
    keep = _on_meta if on_meta else torch.Tensor.clone  # a copy: the module may change its input in place

    def before(name):
        def hook(module, args, kwargs):
            if name not in starts:
                order.append(name)
            starts.setdefault(name, []).append(next(clock))
            if name in record and name not in inputs:
                inputs[name] = pytree.tree_map_only(torch.Tensor, keep, (args, kwargs))

        return hook

    def after(name):
        def hook(module, args, output):
            ends.setdefault(name, []).append(next(clock))
            outputs.setdefault(name, pytree.tree_map_only(torch.Tensor, _on_meta, output))

        return hook

    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(before(name), with_kwargs=True))
        handles.append(module.register_forward_hook(after(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(pixel_values=pixel_values).logits
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return {"order": order, "starts": starts, "ends": ends, "inputs": inputs, "outputs": outputs, "logits": logits}


def _call(small: Any, large: Any, keep_constants: bool = False) -> Call:
    """Compare one call traced at two batch sizes: dimensions that changed follow the batch.

    Constants (inputs that do not follow the batch) are taken from the `large` trace, which holds real tensors.
    """
    leaves, spec = pytree.tree_flatten(small)
    others, other_spec = pytree.tree_flatten(large)
    if spec != other_spec:
        raise NotCacheable("a module's inputs or outputs change structure with the batch size")
    shapes, constants = [], []
    for a, b in zip(leaves, others, strict=True):
        if isinstance(a, torch.Tensor):
            batched = a.ndim > 0 and a.shape[0] == PROBE_SIZES[0] and b.shape[0] == PROBE_SIZES[1]
            if not batched and a.shape != b.shape:
                raise NotCacheable("a tensor changes shape with the batch size other than along its first dimension")
            shapes.append(Shape(tuple(a.shape), batched, a.dtype))
            constants.append(None if batched or not keep_constants else b)
        else:
            shapes.append(Shape(value=a))
            constants.append(a)
    return Call(spec, shapes, constants)


_JSON_VALUES = (type(None), bool, int, float, str)


def _call_to_json(call: Call) -> dict:
    leaves = []
    for shape in call.leaves:
        if shape.shape is not None:
            leaves.append({"shape": list(shape.shape), "batched": shape.batched, "dtype": _dtype_name(shape.dtype)})
        elif isinstance(shape.value, _JSON_VALUES):
            leaves.append({"value": shape.value})
        else:
            raise TypeError(f"{type(shape.value).__name__} has no JSON form")
    constants = {str(i): _tensor_to_json(c) for i, c in enumerate(call.constants) if isinstance(c, torch.Tensor)}
    return {"spec": pytree.treespec_dumps(call.spec), "leaves": leaves, "constants": constants}


def _call_from_json(data: dict, device: torch.device) -> Call:
    leaves = [
        Shape(tuple(d["shape"]), d["batched"], getattr(torch, d["dtype"])) if "shape" in d else Shape(value=d["value"])
        for d in data["leaves"]
    ]
    tensors = {int(i): _tensor_from_json(t, device) for i, t in data["constants"].items()}
    constants = [tensors.get(i, leaf.value) for i, leaf in enumerate(leaves)]
    return Call(pytree.treespec_loads(data["spec"]), leaves, constants)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _tensor_to_json(tensor: torch.Tensor) -> dict:
    raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return {"dtype": _dtype_name(tensor.dtype), "shape": list(tensor.shape), "base64": base64.b64encode(raw).decode()}


def _tensor_from_json(data: dict, device: torch.device) -> torch.Tensor:
    raw = torch.frombuffer(bytearray(base64.b64decode(data["base64"])), dtype=torch.uint8)
    return raw.view(getattr(torch, data["dtype"])).reshape(data["shape"]).to(device)


def _placeholder(forward: Callable, output: Call, feed: Feed) -> Callable:
    def replay(*args, **kwargs):
        if feed.leaves is None:
            return forward(*args, **kwargs)
        device = feed.leaves[0].device
        return pytree.tree_unflatten([s.make(feed.batch_size, device) for s in output.leaves], output.spec)

    return replay


def _from_feed(call: Call, feed: Feed, positions: dict[int, int], last: bool) -> Callable:
    """The entry's inputs from the feed; the last entry empties it, so the next forward sees images again."""

    def hook(module, args, kwargs):
        if feed.leaves is None:
            return None
        leaves = [feed.leaves[positions[i]] if i in positions else c for i, c in enumerate(call.constants)]
        if last:
            feed.leaves = None
        return pytree.tree_unflatten(leaves, call.spec)

    return hook


def _on_meta(tensor: torch.Tensor) -> torch.Tensor:
    """Shape and dtype without the memory: the trace keeps every module's output."""
    return torch.empty(tensor.shape, dtype=tensor.dtype, device="meta")


def _largest(names: list[str]) -> list[str]:
    """Drop names inside another name of the list; keep call order."""
    chosen = set(names)
    return [n for n in names if not any(under(n, [o]) and n != o for o in chosen)]
