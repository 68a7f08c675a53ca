"""Writing output files atomically: a file appears whole under its name, or not at all."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from multimodal.errors import InputError


def cache_root() -> Path:
    """Where rendered data and evaluation models are cached: ``$MULTIMODAL_CACHE``, else
    ``~/.cache/multimodal``."""
    return Path(os.environ.get("MULTIMODAL_CACHE") or Path.home() / ".cache" / "multimodal")


def prepare_out_dir(out_dir: str | Path) -> Path:
    """Create ``out_dir`` if needed and check that it can be written.

    Raises:
        InputError: it is a file, or cannot be created or written.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"output directory {out} is a file; give a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as exc:
        raise InputError(f"cannot write to output directory {out}: {exc.strerror or exc}") from None
    return out


def check_new_folder(out: str | Path, what: str = "output folder") -> Path:
    """``out`` as a folder to write whole: it must not exist, or be an empty folder.

    Raises:
        InputError: ``out`` is a file, or a folder that is not empty (nothing is overwritten).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{what} {out} is a file; give a folder that does not exist yet (or "
                         "an empty one)")
    if out.is_dir() and any(out.iterdir()):
        raise InputError(f"{what} {out} exists and is not empty: refusing to overwrite it; "
                         "give a new folder (or remove it)")
    return out


def existing_files(out_dir: str | Path, stems: list[str]) -> list[Path]:
    """The files in ``out_dir`` whose stem is one of ``stems`` (``000`` matches ``000.png``
    and ``000.json``), sorted; none when ``out_dir`` does not exist."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    wanted = set(stems)
    return sorted(p for p in out.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name.split(".")[0] in wanted)


def default_mode(directory: bool = False) -> int:
    """The permission bits a plain ``open``/``mkdir`` would give under the current umask
    (``mkstemp``/``mkdtemp`` create private 0600/0700 files)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, default_mode())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


class OutputFiles:
    """The files one run writes into ``out_dir``: each written atomically, and on any failure
    inside the ``with`` block every one of them removed again (and ``out_dir`` too when this
    run created it), so a failed run leaves nothing behind.

    The directory is created and checked for writing on construction, before any generation,
    so an unwritable directory fails at once (:class:`InputError`)::

        with OutputFiles(args.out) as files:
            files.write("000.wav", data)

    With ``overwrite=False``, :meth:`write` refuses a name that is already a file there.
    """

    def __init__(self, out_dir: str | Path, *, overwrite: bool = True):
        self.existed = Path(out_dir).exists()
        self.out = prepare_out_dir(out_dir)
        self.overwrite = overwrite
        self.written: list[Path] = []

    def write(self, name: str, data: bytes | str) -> Path:
        """Write ``out_dir/name`` (text as UTF-8) atomically; return its path.

        Raises:
            InputError: ``name`` exists and this instance does not overwrite.
        """
        path = self.out / name
        if not self.overwrite and path.exists() and path not in self.written:
            raise InputError(f"{path} already exists; nothing was written over it (give "
                             "another output directory, or --overwrite)")
        atomic_write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data)
        self.written.append(path)
        return path

    def __enter__(self) -> "OutputFiles":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            return
        for path in self.written:
            path.unlink(missing_ok=True)
        if not self.existed:
            try:
                self.out.rmdir()
            except OSError:
                pass


def sha256_file(path: str | os.PathLike) -> str:
    """The hex sha256 of a file, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
