"""`hf-tl train` through Accelerate's launcher, as `tune run` wraps torchrun: the user's accelerate config,
`--nproc N`, and every `accelerate launch` flag, with hf_tl's exit status and its one error line.

`accelerate launch` itself turns a child's exit status 2 into 1, adds a `CalledProcessError` traceback,
and warns about its defaults on every run without a config; here the defaults are given explicitly, the
child's status is returned, and the child's own `error:` line is all that is said.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Sequence

from hf_tl.errors import RecipeError

NPROC = "--nproc"
LAUNCHED_ENV = ("LOCAL_RANK", "ACCELERATE_USE_CPU")  # torchrun and accelerate launch set these: never launch again
LAUNCH_HELP = (
    "Launch flags, anywhere among the keys: --nproc N starts N processes on this machine (gloo ranks on a CPU); "
    "any `accelerate launch` flag passes through (--mixed_precision bf16, --config_file F, --num_machines 2, "
    "--use_fsdp, ...). With no flag and no accelerate config, the run is this process; with an accelerate config "
    "(`accelerate config`), it starts as that config says."
)


def split_launch_flags(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """`--flag [value]` words for the launcher, and the recipe's `key=value` words. A recipe word always holds
    `=`, so a word after a flag that holds none is that flag's value."""
    flags: list[str] = []
    rest: list[str] = []
    words = list(argv)
    while words:
        word = words.pop(0)
        if not word.startswith("--"):
            rest.append(word)
            continue
        name, eq, value = word.partition("=")
        if not eq and words and "=" not in words[0] and not words[0].startswith("--"):
            value, eq = words.pop(0), "="
        if name == NPROC:
            flags += ["--num_processes", _process_count(value)]
            continue
        flags += [name, value] if eq else [name]
    return flags, rest


def _process_count(value: str) -> str:
    if not value.isdigit() or int(value) < 1:
        raise RecipeError(f"{NPROC} {value or '(nothing)'}: give a number of processes, 1 or more, e.g. --nproc 2.")
    return value


def wants_launcher(flags: Sequence[str]) -> bool:
    """Launch when asked to, or when the user has an accelerate config; never from inside a launched process."""
    if any(os.environ.get(name) for name in LAUNCHED_ENV):
        return False
    return bool(flags) or os.path.isfile(_default_config_file())


def _default_config_file() -> str:
    from accelerate.commands.config import default_config_file

    return default_config_file


def launch(flags: Sequence[str], overrides: Sequence[str]) -> int:
    """Run `python -m hf_tl.train OVERRIDES` as Accelerate would, and return its exit status."""
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    words = [*flags, *_explicit_defaults(flags), "--module", "hf_tl.train", *overrides]
    args, unknown = launch_command_parser().parse_known_args(words)
    if unknown:
        raise RecipeError(f"unknown launch flag(s) {' '.join(unknown)}; `accelerate launch --help` lists them.")
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # the child says what went wrong
    try:
        launch_command(args)
    except subprocess.CalledProcessError as e:
        return _status(e.returncode)
    except ChildFailedError as e:
        return _status(e.failures[min(e.failures)].exitcode)
    except ValueError as e:  # accelerate's own check of the flags (e.g. --multi_gpu with one process)
        raise RecipeError(f"launch flags: {e}") from None
    return 0


def _explicit_defaults(flags: Sequence[str]) -> list[str]:
    """Without an accelerate config, the values accelerate would pick, given so that it does not warn of them."""
    if "--config_file" in flags or os.path.isfile(_default_config_file()):
        return []
    given = set(flags)
    processes = int(flags[flags.index("--num_processes") + 1]) if "--num_processes" in given else 1
    defaults = {
        "--num_processes": str(processes),
        "--num_machines": "1",
        "--mixed_precision": "no",
        "--dynamo_backend": "no",
    }
    words = [w for name, value in defaults.items() if name not in given for w in (name, value)]
    several = processes > 1 and not given & {"--multi_gpu", "--use_fsdp", "--use_deepspeed", "--cpu", "--tpu"}
    return words + (["--multi_gpu"] if several else [])


def _status(code: int) -> int:
    """A child killed by a signal has a negative code: exit 1, as for any failure hf_tl did not name."""
    return code if code > 0 else 1
