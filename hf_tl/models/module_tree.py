"""Names in a module tree: which parameters sit under a prefix, and the shortest prefixes that cover a set.

Pure string functions, so they work the same on bare models, on peft-wrapped ones (after
their names are made canonical) and on timm's parameter groups.
"""

from __future__ import annotations

from collections.abc import Iterable


def under(name: str, prefixes: Iterable[str]) -> bool:
    """True when `name` is one of `prefixes` or lies inside one ("" is the whole model)."""
    return any(p == "" or name == p or name.startswith(f"{p}.") for p in prefixes)


def covering(all_names: Iterable[str], chosen: set[str]) -> list[str]:
    """The shortest module (or parameter) names whose parameters are all in `chosen`, in model order.

    `[""]` means everything; a module only partly chosen is reported by its chosen parameters.
    """
    complete: dict[str, bool] = {}
    for name in all_names:
        parts = name.split(".")
        for prefix in ["", *(".".join(parts[:i]) for i in range(1, len(parts) + 1))]:
            complete[prefix] = complete.get(prefix, True) and name in chosen
    found: list[str] = []
    for prefix, whole in complete.items():
        if whole and not under(prefix, found):
            found.append(prefix)
    return found
