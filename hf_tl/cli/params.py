"""`hf-tl params recipe=NAME [key=value ...] [--json]`: what a strategy trains, from the config alone.

No data and no weights: the model is built on the meta device from its config, so even
ViT-L counts in a second. `model.num_labels=N` sets the class count (default 10).
"""

from __future__ import annotations

import json
import sys

from hf_tl.cli.arguments import recipe_help, wants_help
from hf_tl.config.recipe import recipe_from_argv
from hf_tl.errors import cli

SHOWN_MODULES = 12


@cli
def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if wants_help(args):
        print(recipe_help(__doc__, "--json  print the counts and the trainable modules as JSON."))
        return
    as_json = "--json" in args
    recipe = recipe_from_argv([a for a in args if a != "--json"])
    from hf_tl.strategies.freezing import count_parameters

    summary = count_parameters(recipe)
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
