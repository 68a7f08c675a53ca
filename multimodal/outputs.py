"""Writing a pipeline's output: every sample through the writer of what it ``produces``, all
files or none.

Pipelines return output dataclasses and write nothing; the command line, ``multimodal
replay`` and the trainer's previews all write them here::

    output = pipe("a bag", seed=0)
    paths = write_outputs(output, "out/bag", produces=pipe.produces)

An output gives ``samples`` (a list: images, waveforms, clips, texts, ...) and
``metadata(index)`` (the settings written with sample ``index``; ``metadata(None)`` for a grid).
``produces`` names a spec in the ``specs`` registry (``"text"``, ``"image"``, ``"audio"``,
``"video"``, a plugin's ``"sketch"``), whose ``writer(sample, path, metadata=None)`` writes one
sample: sample ``i`` goes to ``{i:03d}{spec.suffix}``, and the writer may write files of the
same stem beside it (a sidecar ``000.json``, a video's ``000.mp4`` next to ``000.gif``). Media
that no one modality's spec writes (a composed task's clip with its sound track) have writers
registered here with :func:`register_writer`.

Nothing is lost and nothing is silent: files of the stems a call would write (``000.*``, ...,
``grid.*``) that are already in ``out_dir`` are refused, by name, unless ``overwrite`` is
given; and settings that a JSON sidecar or PNG text chunk cannot carry exactly (``inf``,
``nan``, lone surrogates) are refused before any file is written.
"""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path
from typing import Any, Callable

from multimodal.errors import InputError, UnknownComponentError, did_you_mean, excerpt
from multimodal.io import OutputFiles, atomic_write_bytes, atomic_write_text, existing_files
from multimodal.modalities.image.files import image_grid
from multimodal.modalities.video.files import av_mp4_bytes, ffmpeg_available
from multimodal.registry import specs

Writer = Callable[..., Any]

# produces -> (writer, suffix) for media no modality's spec writes.
_WRITERS: dict[str, tuple[Writer, str]] = {}


def register_writer(produces: str, writer: Writer, suffix: str) -> None:
    """Register ``writer(sample, path, metadata=None)`` for outputs that produce ``produces``
    and are not one modality's (a spec's writer wins where both exist)."""
    _WRITERS[produces] = (writer, suffix)


def writer_of(produces: str) -> tuple[Writer, str]:
    """``(writer, suffix)`` of what a pipeline ``produces``.

    Raises:
        UnknownComponentError: no spec and no registered writer of that name.
    """
    if produces in specs:
        spec = specs.get(produces)
        return spec.writer, spec.suffix
    if produces in _WRITERS:
        return _WRITERS[produces]
    known = sorted(set(specs.names()) | set(_WRITERS))
    raise UnknownComponentError(f"no writer for outputs that produce '{produces}'"
                                f"{did_you_mean(produces, known)}; known: {', '.join(known)}")


def output_stems(num_samples: int, grid: bool = False) -> list[str]:
    """The file stems a call writes for ``num_samples`` samples: ``000``, ``001``, ...
    (and ``grid``)."""
    return [f"{i:03d}" for i in range(num_samples)] + (["grid"] if grid else [])


def check_overwrite(out_dir: str | Path, stems: list[str], overwrite: bool = False) -> None:
    """Refuse, naming them, the files of ``stems`` (any suffix) already in ``out_dir``, unless
    ``overwrite``.

    Raises:
        InputError: such files exist (the first 10 named, then how many more).
    """
    if overwrite:
        return
    found = existing_files(out_dir, stems)
    if found:
        names = ", ".join(str(p) for p in found[:10])
        more = f" and {len(found) - 10} more" if len(found) > 10 else ""
        raise InputError(f"{names}{more} already exist{'s' if len(found) == 1 else ''}; "
                         "nothing was written. Give another output directory, or overwrite "
                         "them with --overwrite (Python: overwrite=True)")


def check_metadata(metadata: Any, where: str = "settings") -> None:
    """Refuse settings a JSON sidecar or a PNG text chunk cannot carry exactly: ``inf`` and
    ``nan`` (not JSON; ``json.dumps`` would write ``Infinity``), strings with lone
    surrogates (not UTF-8), and values JSON has no form for.

    Raises:
        InputError: naming the setting and its value.
    """
    def walk(value: Any, key: str) -> None:
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{where}: {key} is {value!r}, which the output's settings cannot "
                             "record (JSON has no inf or nan); nothing was written")
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise InputError(f"{where}: {key} holds a character that is not UTF-8 (a lone "
                                 f"surrogate): {excerpt(value)}; nothing was written") from None
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{key}[{i}]")

    walk(metadata, "")
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where} cannot be written as JSON: {exc}; nothing was "
                         "written") from None


def write_outputs(output: Any, out_dir: str | Path, *, produces: str, grid: bool = False,
                  strip: bool = False, overwrite: bool = False) -> list[Path]:
    """Write every sample of ``output`` into ``out_dir``, atomically and all or nothing.

    Args:
        output: A pipeline's output (``samples`` and ``metadata(index)``).
        out_dir: The directory (created; an unwritable one is an :class:`InputError` before
            anything is written).
        produces: What the pipeline produces (its ``produces``): whose writer writes.
        grid: Also write ``grid.png``: the samples tiled (image outputs only), with
            ``metadata(None)``.
        strip: Ask the writer for a strip of each sample's frames (a writer that takes
            ``strip``: video's writes ``000.png``).
        overwrite: Replace files of the stems this call writes that are already there
            (default: refuse them, naming them, before anything is written).

    Returns:
        The paths written, in the order written.

    Raises:
        InputError: ``grid`` or ``strip`` where the output cannot have one, an unwritable
            ``out_dir``, files that would be overwritten (without ``overwrite``), or settings
            JSON cannot carry (``inf``, ``nan``, lone surrogates); a failed writer leaves no
            file of this call behind.
        UnknownComponentError: nothing writes ``produces``.
    """
    writer, suffix = writer_of(produces)
    if grid and produces != "image":
        raise InputError(f"grid: only images tile into a grid; this output is {produces}")
    options = {}
    if strip:
        if "strip" not in inspect.signature(writer).parameters:
            raise InputError(f"strip: the {produces} writer makes no strip of frames")
        options["strip"] = True
    samples = list(output.samples)
    metadata = [output.metadata(i) for i in range(len(samples))]
    for i, meta in enumerate(metadata):
        check_metadata(meta, f"settings of sample {i}")
    if grid:
        check_metadata(output.metadata(None), "settings of the grid")
    check_overwrite(out_dir, output_stems(len(samples), grid), overwrite)
    with OutputFiles(out_dir) as out:
        for i, sample in enumerate(samples):
            _write(out, writer, sample, out.out / f"{i:03d}{suffix}", metadata[i], **options)
        if grid:
            _write(out, writer, image_grid(samples), out.out / f"grid{suffix}",
                   output.metadata(None))
    return list(out.written)


def _write(out: OutputFiles, writer: Writer, sample: Any, path: Path, metadata: dict,
           **options: Any) -> None:
    """Call ``writer`` and record in ``out`` each file of ``path``'s stem it wrote (by a new
    inode: files are written through a rename), in the order it returns them, so a failure
    later in the run removes them and files it did not touch stay."""
    before = _stem_files(path)
    returned = None
    try:
        returned = writer(sample, path, metadata, **options)
    finally:
        changed = [p for p, inode in _stem_files(path).items() if before.get(p) != inode]
        order = [Path(p) for p in (returned or [path])]
        out.written.extend([p for p in order if p in changed] +
                           [p for p in changed if p not in order])


def _stem_files(path: Path) -> dict[Path, int]:
    return {p: p.stat().st_ino for p in path.parent.glob(f"{path.stem}.*") if p.is_file()}


# -- a composed task's clip with its sound track ------------------------------------------------
def write_audiovisual(clip: Any, path: Path, metadata: dict[str, Any] | None = None
                      ) -> list[Path]:
    """Mux a clip and its sound track (``frames``, ``fps``, ``audio``, ``sample_rate``; see
    :class:`multimodal.pipelines.composed.AudioVisualClip`) into one MP4 at ``path`` (H.264 +
    AAC), and, with ``metadata``, the JSON of the same stem: the settings and ``files``.

    Raises:
        InputError: ffmpeg is not available (muxing needs it).
    """
    path = Path(path)
    if not ffmpeg_available():
        task = (metadata or {}).get("task", "an audiovisual output")
        raise InputError(f"{task} writes an MP4 with sound, which needs ffmpeg "
                         "(pip install imageio-ffmpeg)")
    mp4 = path.with_suffix(".mp4")
    atomic_write_bytes(mp4, av_mp4_bytes(clip.frames, clip.fps, clip.audio, clip.sample_rate))
    if metadata is None:
        return [mp4]
    sidecar = path.with_suffix(".json")
    atomic_write_text(sidecar, json.dumps({**metadata, "files": [mp4.name]}, indent=1) + "\n")
    return [mp4, sidecar]


register_writer("audiovisual", write_audiovisual, ".mp4")
