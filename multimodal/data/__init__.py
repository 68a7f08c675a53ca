"""Dataset readers that are not specific to one modality's decoder."""

import csv
import json
import os
import zlib
from pathlib import Path
from typing import Any

from multimodal.errors import DataError


def check_split(split: str) -> None:
    """Raise :class:`DataError` unless ``split`` is ``"train"`` or ``"val"``."""
    if split not in ("train", "val"):
        raise DataError(f"split must be 'train' or 'val', got {split!r}")


def in_split(key: str, split: str, val_fraction: float) -> bool:
    """Whether an item keyed by ``key`` (a document's text, a clip's id, a file path) belongs
    to ``split`` ("train" or "val") under a checksum split: deterministic, and stable when
    items are added or reordered."""
    is_val = (zlib.crc32(key.encode("utf-8")) % 10_000) < val_fraction * 10_000
    return is_val if split == "val" else not is_val


def read_media_split(path: str, key: str, *, split: str, val_fraction: float,
                     root: str | None = None) -> tuple[Path, list[Path], list[str], list[int]]:
    """The files, captions and labels of ``split`` from a JSONL or CSV media list
    (:func:`read_media_list`; ``path`` may be a folder holding exactly one), split by a
    checksum of each listed path (:func:`in_split`); paths are relative to ``root`` (default:
    the list's directory).

    Returns:
        ``(list file, paths, captions, labels)``.

    Raises:
        DataError: the list is missing or malformed, or a listed file is missing (the first
            five named).
    """
    list_file = Path(os.path.expanduser(path))
    if list_file.is_dir():  # a folder: its one list file, as a user names "my_images"
        lists = sorted(f for f in list_file.iterdir()
                       if f.suffix in (".jsonl", ".csv") and f.is_file())
        if len(lists) != 1:
            raise DataError(f"{list_file} is a folder with {len(lists)} list files "
                            f"({', '.join(f.name for f in lists) or 'none'}); give one JSONL "
                            f"({{\"{key}\": PATH, \"caption\": TEXT}} per line) or CSV (columns "
                            f"{key},caption) list, or a folder holding exactly one")
        list_file = lists[0]
    if not list_file.is_file():
        raise DataError(f"{key} list file not found: {list_file}")
    base = Path(os.path.expanduser(root)) if root else list_file.parent
    paths: list[Path] = []
    captions: list[str] = []
    labels: list[int] = []
    missing = []
    for where, record in read_media_list(list_file, key):
        if not in_split(record[key], split, val_fraction):
            continue
        media = base / record[key]
        if not media.is_file():
            missing.append(f"{media} ({where})")
        paths.append(media)
        captions.append(record["caption"])
        labels.append(record["label"])
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DataError(f"{key}s listed in {list_file} not found: "
                        f"{', '.join(missing[:5])}{more}")
    return list_file, paths, captions, labels


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
