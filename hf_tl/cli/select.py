"""`hf-tl select dataset=D models=[id1,id2,...]|zoo=NAME [top_k=3] [finetune=false]`: rank backbones on a dataset.

Linear-probe and k-NN accuracy and LogME on each candidate's frozen features: minutes, not a fine-tuning each.

What it does and writes: `hf_tl.selection.select`.
"""

from __future__ import annotations

import sys

from hf_tl.cli.arguments import command_help, parse_key_values, split_overrides, wants_help
from hf_tl.config.commands import SelectArgs
from hf_tl.errors import cli
from hf_tl.selection.recipe import check_select_args
from hf_tl.selection.zoo import candidates_for

OVERRIDES = (
    "Training overrides (training.epochs=20, training.lr=1e-3, ...; `hf-tl train --help` lists them) apply to the "
    "fine-tunings of the top_k: with finetune=true, and in the sweep command select prints. The data are select's "
    "own keys, so that the fine-tunings read the split the scores did."
)


@cli
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if wants_help(argv):
        print(command_help(__doc__, [("select keys", SelectArgs, "")], OVERRIDES))
        return
    mine, overrides = split_overrides(SelectArgs, argv, "select", "zoo=imagenet_base", sections=("training",))
    args: SelectArgs = parse_key_values(SelectArgs, mine)
    candidates = candidates_for(args.models, args.zoo)  # mistakes are answered before torch loads
    check_select_args(args, candidates[0].id, overrides)
    from hf_tl.selection.select import run_select

    run_select(args, overrides)
