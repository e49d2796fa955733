"""Images that cannot be decoded are found before training starts, so a bad file costs seconds, not an epoch.

The check decodes every image once (datasets caches the result for a dataset on disk, so a
second run on the same data pays nothing) and then, following `data.on_bad_image`, either
stops with the rows and files at fault or leaves them out and says how many.
"""

from __future__ import annotations

import PIL.Image
from datasets import Dataset, Image

from hf_tl import progress
from hf_tl.errors import DataError, warn
from hf_tl.training.phases import timed

SHOWN = 5


@timed("image_check")
def drop_or_refuse_bad_images(
    dataset: Dataset, column: str, on_bad_image: str, split: str, num_proc: int | None = None
) -> tuple[Dataset, int]:
    """The dataset without undecodable images (`skip`), or a DataError naming them (`error`); and the count left out."""
    raw = dataset.cast_column(column, Image(decode=False))
    with progress.library_bars():  # datasets' bar, shown when hf_tl's are (eval and analyze call this too)
        readable = raw.map(
            _check_batch,
            batched=True,
            input_columns=[column],
            remove_columns=raw.column_names,
            num_proc=num_proc,
            desc=f"Checking {split} images",
        )["readable"]
    bad = [i for i, ok in enumerate(readable) if not ok]
    if not bad:
        return dataset, 0
    where = ", ".join(_describe(raw[i][column], i) for i in bad[:SHOWN]) + (" ..." if len(bad) > SHOWN else "")
    if on_bad_image == "error":
        raise DataError(
            f"{len(bad)} of {len(dataset)} images in split '{split}' cannot be decoded: {where}. "
            "Replace or remove them, or set data.on_bad_image=skip to leave them out."
        )
    warn(f"skipped {len(bad)} of {len(dataset)} images in split '{split}' that cannot be decoded: {where}")
    bad_rows = set(bad)
    return dataset.select(i for i in range(len(dataset)) if i not in bad_rows), len(bad)


def _check_batch(images: list[dict]) -> dict[str, list[bool]]:
    return {"readable": [_decodes(image) for image in images]}


def _decodes(image: dict | None) -> bool:
    """Decoded as training will decode it: by datasets' Image feature (local files, bytes, remote paths)."""
    if not image or not (image.get("bytes") or image.get("path")):
        return False
    try:
        Image().decode_example(image).load()
        return True
    except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError):
        return False


def _describe(image: dict | None, row: int) -> str:
    path = (image or {}).get("path")
    return f"row {row} ({path})" if path else f"row {row}"
