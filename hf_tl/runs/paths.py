"""Where a command writes: checked before any work, so that no work is lost to a path that cannot be written.

Nothing heavy is imported here: commands check their paths before they import torch.
"""

from __future__ import annotations

import re
from pathlib import Path

from hf_tl.errors import HfTlError


def check_output_folder(path: Path, key: str) -> Path:
    """An output folder that can be made or added to: neither it nor any folder above it is a file, or a link
    to nothing."""
    path = Path(path)
    for part in (path, *path.parents):
        if part.is_dir():
            return path
        if part.exists() or part.is_symlink():
            raise HfTlError(
                f"{key}={path}: {part} exists and is not a folder. Give a folder to write into (new, or existing)."
            )
    return path


def slug(text: str) -> str:
    """A Hub id or a path as a folder name: the default output folders are named after what they read."""
    path = Path(text).expanduser()
    if path.exists():
        parts = path.resolve().parts[-2:]
        text = "-".join(parts)
    return re.sub(r"[^\w.-]+", "-", text.replace("/", "--")).strip("-") or "x"
