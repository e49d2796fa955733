"""`python -m hf_tl.params recipe=NAME [key=value ...] [--json]`: what a strategy trains, from the config alone.

No data and no weights: the model is built on the meta device from its config, so even
ViT-L counts in a second. `model.num_labels=N` sets the class count (default 10).
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import torch

from hf_tl.backbones import load_model, replace_heads
from hf_tl.command_line import recipe_help, wants_help
from hf_tl.errors import cli
from hf_tl.recipe import Recipe, recipe_from_argv
from hf_tl.strategies import Summary, apply_strategy

DEFAULT_NUM_LABELS = 10
SHOWN_MODULES = 12


def count_parameters(recipe: Recipe) -> Summary:
    with torch.device("meta"):
        model = load_model(replace(recipe.model, weights="none"))
        labels = [str(i) for i in range(recipe.model.num_labels or DEFAULT_NUM_LABELS)]
        replace_heads(model, labels, recipe.model.head)
        _, summary = apply_strategy(model, recipe.strategy)
    return summary


@cli
def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if wants_help(args):
        print(recipe_help(__doc__, "--json  print the counts and the trainable modules as JSON."))
        return
    as_json = "--json" in args
    summary = count_parameters(recipe_from_argv([a for a in args if a != "--json"]))
    if as_json:
        print(json.dumps(summary.to_dict()))
        return
    print(f"strategy:           {summary.kind}")
    print(f"trainable:          {summary.trainable:,} of {summary.total:,} ({summary.trainable / summary.total:.2%})")
    print(f"trainable backbone: {summary.trainable_backbone:,}")
    print(f"trainable head:     {summary.trainable_head:,}")
    shown = summary.trainable_modules[:SHOWN_MODULES] or ["(none)"]
    hidden = len(summary.trainable_modules) - len(shown)
    if hidden > 0:
        shown.append(f"... and {hidden} more (--json lists them all)")
    print("trainable modules:  " + ("\n" + " " * 20).join(shown))


if __name__ == "__main__":
    main()
