"""Dataset readers that are not specific to one modality's decoder."""

import csv
import json
from pathlib import Path
from typing import Any

from multimodal.errors import DataError


def check_split(split: str) -> None:
    """Raise :class:`DataError` unless ``split`` is ``"train"`` or ``"val"``."""
    if split not in ("train", "val"):
        raise DataError(f"split must be 'train' or 'val', got {split!r}")


def read_media_list(list_file: Path, key: str) -> list[tuple[str, dict]]:
    """``[(where, {key, "caption", "label"})]`` from a JSONL or CSV list of media files
    (``key`` is the column naming the file: ``"image"``, ``"video"``); ``where`` is
    ``file:line`` for messages.

    Raises:
        DataError: unreadable file, wrong extension, a malformed row (named by file and line),
            or no records.
    """
    try:
        text = list_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {key} list {list_file}: {exc}") from None
    rows: list[tuple[str, Any]] = []
    if list_file.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or not {key, "caption"} <= set(reader.fieldnames):
            raise DataError(f"{list_file}: the CSV header must name '{key}' and 'caption' "
                            f"columns, got {reader.fieldnames}")
        rows = [(f"{list_file}:{i + 2}", row) for i, row in enumerate(reader)]
    elif list_file.suffix.lower() in (".jsonl", ".json"):
        for i, line in enumerate(text.splitlines()):
            if not line.strip():
                continue
            try:
                rows.append((f"{list_file}:{i + 1}", json.loads(line)))
            except ValueError as exc:
                raise DataError(f"{list_file}:{i + 1}: not a JSON object: {exc}") from None
    else:
        raise DataError(f"{key} list {list_file} must be a .jsonl or .csv file")
    records = []
    for where, row in rows:
        if not isinstance(row, dict) or not isinstance(row.get(key), str) or \
                not isinstance(row.get("caption"), str) or not row[key]:
            raise DataError(f"{where}: a record needs a string '{key}' (path) and 'caption', "
                            f"got {row!r}")
        label = row.get("label")
        try:
            label = -1 if label in (None, "") else int(label)
        except (TypeError, ValueError):
            raise DataError(f"{where}: 'label' must be an integer, got {label!r}") from None
        records.append((where, {key: row[key], "caption": row["caption"], "label": label}))
    if not records:
        raise DataError(f"{key} list {list_file} holds no records")
    return records
