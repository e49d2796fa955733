"""`hf-tl analyze cka|attention-distance key=value ...`: how two backbones' representations compare.

What it does and writes: `hf_tl.analysis.analyze`.
"""

from __future__ import annotations

from hf_tl.cli.arguments import subcommand_arguments_of
from hf_tl.config.commands import CkaArgs, DistanceArgs
from hf_tl.errors import cli

COMMANDS = {"cka": CkaArgs, "attention-distance": DistanceArgs}
EXAMPLE = "hf-tl analyze cka model_a=google/vit-base-patch16-224 model_b=microsoft/resnet-50 dataset=cifar10"


@cli
def main(argv: list[str] | None = None) -> None:
    chosen = subcommand_arguments_of(__doc__, COMMANDS, argv, EXAMPLE)
    if chosen is None:
        return
    command, args = chosen
    from hf_tl.analysis.analyze import run_attention_distance, run_cka

    run_cka(args) if command == "cka" else run_attention_distance(args)
