"""Text datasets: the Debian ``fortunes`` corpus and a user's own text files.

Both yield documents (``str``). The train/validation split is decided by a checksum of each
document's text, so it is deterministic and does not move when files are added or reordered.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Literal, Sequence

from multimodal.data import check_split, in_split
from multimodal.errors import DataError
from multimodal.registry import datasets

FORTUNES_DIR = "/usr/share/games/fortunes"
# Files of pictures drawn in characters, not prose; left out by default.
FORTUNES_EXCLUDED = ("art", "ascii-art")


def read_text(path: Path) -> str:
    """Read UTF-8 text.

    Raises:
        DataError: the file is unreadable or not UTF-8 (names the file and the byte offset).
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read text file {path}: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not UTF-8 text (invalid byte 0x{raw[exc.start]:02x} at offset "
            f"{exc.start}); convert it, e.g. `iconv -f latin1 -t utf-8`"
        ) from None


@datasets.register("fortunes")
class FortunesDataset(Sequence[str]):
    """Quotations and literature from the Debian ``fortunes`` package (~2 MB of English).

    Entries are separated by lines holding only ``%``; each entry is one document.

    Args:
        split: ``"train"`` or ``"val"`` (set by the builder).
        root: Directory of the fortune files (default ``/usr/share/games/fortunes``).
        files: Names of the files to read (default: all but ``art`` and ``ascii-art``).
        val_fraction: Share of entries held out for validation (default 0.05).

    Raises:
        DataError: the directory or a named file is missing (install with
            ``apt-get install fortunes``), or a file is not UTF-8.
    """

    injected_args = ("split",)

    def __init__(self, *, split: Literal["train", "val"] = "train", root: str = FORTUNES_DIR,
                 files: list[str] | None = None, val_fraction: float = 0.05):
        check_split(split)
        root_path = Path(root)
        if not root_path.is_dir():
            raise DataError(
                f"fortunes directory {root} not found; install it with "
                "`apt-get install fortunes` or set data.text.root"
            )
        if files is None:
            paths = sorted(
                p for p in root_path.iterdir()
                if p.is_file() and not p.is_symlink() and not p.suffix
                and p.name not in FORTUNES_EXCLUDED
            )
        else:
            paths = [root_path / f for f in files]
            missing = [str(p) for p in paths if not p.is_file()]
            if missing:
                raise DataError(f"fortune files not found: {', '.join(missing)}")
        if not paths:
            raise DataError(f"no fortune files in {root}")
        self.documents = []
        for path in paths:
            for entry in read_text(path).split("\n%\n"):
                entry = entry.strip("%\n")
                if entry.strip() and in_split(entry, split, val_fraction):
                    self.documents.append(entry + "\n")

    def __len__(self) -> int:
        return len(self.documents)

    def __getitem__(self, index):
        return self.documents[index]


@datasets.register("text_files")
class TextFilesDataset(Sequence[str]):
    """A user's own UTF-8 text files.

    Args:
        paths: File paths or glob patterns (``**`` allowed); a string or a list.
        split: ``"train"`` or ``"val"`` (set by the builder).
        separator: Split each file into documents at lines equal to this string (for example
            ``"%"``); default ``None``: each file is one document, or split at blank lines when
            ``split_paragraphs`` is true.
        split_paragraphs: Treat each blank-line-separated paragraph as a document.
        val_fraction: Share of documents held out for validation (default 0.05).

    Raises:
        DataError: no file matches, or a file is unreadable or not UTF-8.
    """

    injected_args = ("split",)

    def __init__(self, *, paths: str | list[str], split: Literal["train", "val"] = "train",
                 separator: str | None = None, split_paragraphs: bool = False,
                 val_fraction: float = 0.05):
        check_split(split)
        patterns = [paths] if isinstance(paths, str) else list(paths)
        files: list[Path] = []
        for pattern in patterns:
            matched = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
            files += [Path(m) for m in matched if Path(m).is_file()]
        if not files:
            raise DataError(f"no text files match {patterns}")
        self.documents = []
        for path in files:
            text = read_text(path)
            if separator is not None:
                parts = text.split(f"\n{separator}\n")
            elif split_paragraphs:
                parts = text.split("\n\n")
            else:
                parts = [text]
            for part in parts:
                if part.strip() and in_split(part, split, val_fraction):
                    self.documents.append(part.strip("\n") + "\n")

    def __len__(self) -> int:
        return len(self.documents)

    def __getitem__(self, index):
        return self.documents[index]
