"""The one argument grammar of every `hf-tl` command: `key=value`, dotted keys, `--help`, did-you-mean.

Commands describe their arguments as dataclasses of `option` fields (`hf_tl.config.commands`, and the
recipe's sections) and read them here, so a bad key or value gets the same clear message
everywhere: the key, the value, and what is allowed.
"""

from __future__ import annotations

import dataclasses
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

from omegaconf import OmegaConf, errors

from hf_tl.config.recipe import SECTIONS, available_recipes, check_options, did_you_mean, type_name
from hf_tl.errors import RecipeError

HELP_FLAGS = ("-h", "--help")
JSON_FLAG = "--json"


def parse_key_values(schema: type, argv: list[str]) -> Any:
    """`key=value` arguments onto a dataclass, with errors that name the key, the value and what is allowed.

    A bare word fills the schema's next positional key (`hf-tl push runs/x`); a list key takes all that are left.
    """
    fields = dataclasses.fields(schema)
    valid = [f.name for f in fields]
    given: dict[str, Any] = {}
    dotlist = []
    for arg in argv:
        key = arg.split("=", 1)[0]
        if "${" in arg:  # bare words too: OmegaConf would resolve ${oc.env:...}
            raise RecipeError(f"argument '{arg}': interpolations are not allowed.")
        if arg == JSON_FLAG and "json" in valid:  # the one flag: a command that prints data prints it as JSON
            dotlist.append("json=true")
            continue
        if arg.startswith("-"):
            raise RecipeError(_flag_message(arg, valid))
        if "=" not in arg:
            _place_bare(arg, fields, given, valid)
            continue
        if key not in valid:
            raise RecipeError(f"unknown key '{key}'.{did_you_mean(key, valid)}\n  valid keys: {', '.join(valid)}")
        dotlist.append(arg)
    for arg in dotlist:
        if (key := arg.split("=", 1)[0]) in given:
            raise RecipeError(f"{key} is given twice, as '{given[key]}' and as '{arg}'; give it once.")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create(given), OmegaConf.from_dotlist(dotlist))
    except errors.ValidationError as e:
        field = next(f for f in fields if f.name == e.full_key)
        hint = ""
        if _is_list(field):  # a positional list takes bare words; any other, brackets
            positional = field.metadata.get("positional")
            hint = (
                f" Give them as bare words: {e.value} ..." if positional else f" Use brackets: {e.full_key}=[{e.value}]"
            )
        raise RecipeError(
            f"key '{e.full_key}' got {e.value!r}, which is not a valid {type_name(field.type)}.{hint}"
        ) from None
    for f in fields:
        if OmegaConf.is_missing(merged, f.name):
            raise RecipeError(f"'{f.name}=' is required: {f.metadata['help']}")
    args = OmegaConf.to_object(merged)
    check_options(args, what="key")
    return args


def split_overrides(
    schema: type, argv: list[str], command: str, example: str, sections: Sequence[str] = tuple(SECTIONS)
) -> tuple[list[str], list[str]]:
    """A command's own `key=value` arguments (for `parse_key_values` on `schema`) and dotted recipe overrides
    (training.epochs=2) apart: the overrides go to every run the command starts; output.dir, which the command
    chooses, is refused."""
    own = [f.name for f in dataclasses.fields(schema)]
    mine, overrides = [], []
    for arg in argv:
        key = arg.split("=", 1)[0]
        if "=" not in arg:
            raise RecipeError(f"argument '{arg}' is not of the form key=value (e.g. {example}).")
        if "${" in arg:
            raise RecipeError(f"argument '{arg}': interpolations are not allowed.")
        if key in own:
            mine.append(arg)
        elif "." in key and key.split(".")[0] in sections:
            overrides.append(arg)
        else:
            example_overrides = ", ".join(f"{s}.{EXAMPLE_KEYS[s]}" for s in sections if s in EXAMPLE_KEYS)
            raise RecipeError(
                f"unknown key '{key}'.{did_you_mean(key, own)}\n  {command} keys: {', '.join(own)}\n"
                f"  recipe overrides, applied to every run {command} starts, are dotted keys of "
                f"{', '.join(sections)}: {example_overrides}"
            )
    if any(o.startswith("output.dir=") for o in overrides):
        raise RecipeError(
            f"output.dir is the {command}'s to choose (one folder per run); set the {command}'s folder with out=."
        )
    return mine, overrides


EXAMPLE_KEYS = {"training": "epochs=2", "data": "max_train_samples=64", "strategy": "kind=full"}


def _place_bare(arg: str, fields: Sequence[dataclasses.Field], given: dict[str, Any], valid: list[str]) -> None:
    """A bare word goes to the first positional key not yet given, or is added to a positional list."""
    for f in fields:
        if not f.metadata.get("positional"):
            continue
        if _is_list(f):
            given.setdefault(f.name, []).append(arg)
            return
        if f.name not in given:
            given[f.name] = arg
            return
    raise RecipeError(f"argument '{arg}' is not of the form key=value; keys: {', '.join(valid)}")


def _is_list(f: dataclasses.Field) -> bool:
    return str(f.type).startswith(("list", "List", "typing.List"))


def _flag_message(arg: str, valid: list[str]) -> str:
    """`--repo-id X`, as other tools spell it: say the key=value form hf-tl takes."""
    name = arg.lstrip("-").split("=", 1)[0].replace("-", "_")
    if name in valid:
        return f"'{arg}': hf-tl takes key=value arguments; write {name}=VALUE."
    return f"unknown option '{arg}'.{did_you_mean(name, valid)}\n  valid keys (key=value): {', '.join(valid)}"


def subcommand(argv: Sequence[str], commands: Sequence[str], example: str) -> tuple[str, list[str]]:
    """The first word names a command's subcommand (`hf-tl analyze cka ...`); checked with did-you-mean."""
    commands = list(commands)
    if not argv or argv[0] not in commands:
        given = f"'{argv[0]}'" if argv else "nothing"
        hint = did_you_mean(argv[0], commands) if argv else ""
        choices = ", ".join(commands[:-1]) + f" or {commands[-1]}"
        raise RecipeError(f"got {given}; start with a command: {choices}.{hint}\n  e.g. {example}")
    return argv[0], list(argv[1:])


def wants_help(argv: Sequence[str]) -> bool:
    """`--help` or `-h` anywhere: the command prints its usage and does nothing else."""
    return any(arg in HELP_FLAGS for arg in argv)


def arguments_of(doc: str, schema: type, argv: Sequence[str] | None) -> Any | None:
    """A command's arguments (sys.argv when None) onto `schema`; None when `--help` was asked, and printed."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if wants_help(argv):
        print(command_help(doc, [("keys", schema, "")]))
        return None
    return parse_key_values(schema, argv)


def subcommand_arguments_of(
    doc: str, commands: dict[str, type], argv: Sequence[str] | None, example: str
) -> tuple[str, Any] | None:
    """`hf-tl analyze cka ...`: the subcommand and its arguments; None when `--help` was asked, and printed
    (the subcommand's keys when one is named, else every subcommand's)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if wants_help(argv):
        chosen = [c for c in commands if argv[0] == c] if argv else []
        print(command_help(doc, [(f"{c} keys", commands[c], "") for c in chosen or commands]))
        return None
    command, rest = subcommand(argv, commands, example)
    return command, parse_key_values(commands[command], rest)


def command_help(doc: str, groups: Sequence[tuple[str, type, str]], extra: str = "") -> str:
    """A key=value command's --help: usage and purpose from its docstring's first paragraph (`usage`: what it
    does), then each key of the dataclasses that check them (`groups`: heading, dataclass, key prefix)."""
    first = " ".join(doc.strip().split("\n\n")[0].split())
    usage, _, purpose = first.partition("`: ")
    parts = [f"usage: {usage.strip('`')}", purpose]
    if extra:
        parts.append("\n".join(wrapped for line in extra.splitlines() for wrapped in _wrap(line)))
    for heading, schema, prefix in groups:
        parts.append(f"{heading}:\n" + "\n".join(_key_help(f, prefix) for f in dataclasses.fields(schema)))
    return "\n\n".join(parts)


def recipe_help(doc: str, extra: str = "") -> str:
    """--help of the commands that read a recipe (train, params): every recipe key, section by section."""
    recipe = (
        f"recipe=NAME  a shipped recipe ({', '.join(available_recipes())}) or a .yaml path; "
        "`hf-tl recipes show NAME` prints one. Any key below overrides it: section.key=value."
    )
    groups = [(f"{name} keys", section, f"{name}.") for name, section in SECTIONS.items()]
    return command_help(doc, groups, "\n".join([recipe, extra]) if extra else recipe)


def _key_help(f: dataclasses.Field, prefix: str) -> str:
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    facts = ["required" if default == "???" else f"default {_shown(default)}"]
    if f.metadata.get("choices"):
        facts.append(f"one of: {', '.join(map(str, f.metadata['choices']))}")
    if f.metadata.get("min") is not None:
        facts.append(f"at least {f.metadata['min']}")
    head = f"  {prefix}{f.name}={type_name(f.type)}"
    return "\n".join([head, *_wrap(f"{f.metadata.get('help', '')} ({'; '.join(facts)})", indent=6)])


def _shown(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, str) and not value else str(value)


def _wrap(text: str, indent: int = 0) -> list[str]:
    return textwrap.wrap(text, width=100, initial_indent=" " * indent, subsequent_indent=" " * indent)
