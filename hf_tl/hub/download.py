"""What a downloaded checkpoint says about itself, and the `hf-tl eval` command that evaluates it."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from hf_tl.data.datasets import VALIDATION, is_held_out
from hf_tl.hub.card import load_card, recorded_results
from hf_tl.runs.folder import RECIPE_FILE


def describe(path: Path) -> str:
    """What a downloaded folder says about itself: its card's results and its recipe."""
    lines = []
    card = load_card(path)
    results = recorded_results(card) if card else []
    if results:
        lines.append("metrics its card records:")
        for r in results:
            where = " / ".join(str(x) for x in (r["dataset"], r["config"], r["split"]) if x)
            lines.append(f"  {r['metric']:<16} {r['value']:.4f}   ({where})")
    else:
        lines.append("its card records no metrics (no README.md with a model-index).")
    recipe = path / RECIPE_FILE
    if recipe.is_file():
        lines.append(f"recipe it was trained with ({RECIPE_FILE}):")
        lines.extend(f"  {line}" for line in recipe.read_text().splitlines())
    else:
        lines.append(f"no {RECIPE_FILE}: not a checkpoint hf_tl pushed.")
    return "\n".join(lines)


def eval_command(path: Path, revision: str | None = None) -> str:
    """The `hf-tl eval` command for a downloaded checkpoint, on the data its card records results for.

    A split the run held out of its training split is named `validation`, which `hf-tl eval` carves again.
    The command names the revision that was downloaded, and trusts the code of an MLP head the checkpoint
    ships, without which it cannot be loaded.
    """
    card = load_card(path)
    recorded = recorded_results(card) if card else []
    model = shlex.join(["python", "-m", "hf_tl.eval", f"model={path}"])
    loading = shlex.join(_loading_args(path, revision))
    if not recorded:
        return f"{model} dataset=<a labelled dataset> split=<its split> {loading}".rstrip()
    dataset, config, split = recorded[0]["dataset"], recorded[0]["config"], recorded[0]["split"]
    # a local dataset, which the card names by its folder alone: hf-tl eval takes the path from recipe.yaml
    words = [] if recorded[0].get("local") else [f"dataset={dataset}"]
    words += [f"config_name={config}"] if config else []
    words.append(f"split={VALIDATION if is_held_out(split) else split}")
    return f"{model} {shlex.join(words)} {loading}".rstrip()


def _loading_args(path: Path, revision: str | None) -> list[str]:
    """What `hf-tl eval` needs to load this checkpoint as it was downloaded."""
    words = [f"revision={revision}"] if revision else []
    return words + (["trust_remote_code=true"] if ships_model_code(path) else [])


def ships_model_code(path: Path) -> bool:
    """The checkpoint's classes come with it (an hf_tl MLP head, or another custom class): config.json says so."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):  # no config.json, or not JSON: transformers' own error says so at load time
        return False
    return isinstance(config, dict) and bool(config.get("hf_tl_mlp_heads") or config.get("auto_map"))
