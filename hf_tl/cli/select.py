"""`hf-tl select dataset=D models=[id1,id2,...]|zoo=NAME [top_k=3] [finetune=false]`: rank backbones on a dataset.

Linear-probe and k-NN accuracy and LogME on each candidate's frozen features: minutes, not a fine-tuning each.

What it does and writes: `hf_tl.selection.select`.
"""

from __future__ import annotations

from hf_tl.cli.arguments import arguments_of
from hf_tl.config.commands import SelectArgs
from hf_tl.errors import cli
from hf_tl.selection.zoo import candidates_for


@cli
def main(argv: list[str] | None = None) -> None:
    args: SelectArgs | None = arguments_of(__doc__, SelectArgs, argv)
    if args is None:
        return
    candidates_for(args.models, args.zoo)  # a wrong zoo or models list is answered before torch loads
    from hf_tl.selection.select import run_select

    run_select(args)
