"""``multimodal replay FILE``: regenerate an output from the settings it carries.

Every output records its task, prompt, seed, settings and checkpoint id: a PNG in its text
chunk, a WAV, MP4, GIF or TXT in the sidecar JSON of the same stem (``000.wav`` ->
``000.json``). Replay reads them, loads the checkpoint (``--checkpoint``, default the task's
embedded one), refuses one whose id differs from the file's, calls the pipeline with the
recorded settings (those named like its ``__call__``'s arguments), writes the output into
``--out`` through :func:`multimodal.outputs.write_outputs`, and compares the regenerated file
with the original. Files of the same names already in ``--out`` (the original itself, when
``--out`` is its folder) are refused before generating unless ``--overwrite`` is given.

The networks run in the dtype the file records (``torch_dtype``, written by outputs made in
bf16 or fp16: :func:`~multimodal.pipelines.base.runtime_settings`; a file without one was made
in float32, as every file before dtypes were recorded). A file made on another kind of device
(a recorded ``device``, e.g. ``cuda``, against ``--device cpu``) is replayed there with a
warning: other kernels round differently, so the result may differ in the last bits.
"""

from __future__ import annotations

import inspect
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch
from PIL import Image

from multimodal.errors import InputError, excerpt
from multimodal.io import OutputFiles
from multimodal.modalities.image.files import read_png_metadata
from multimodal.outputs import check_overwrite, output_stems, write_outputs
from multimodal.pipelines import load_pipeline
from multimodal.pipelines.base import DTYPES, check_dtype
from multimodal.registry import pipelines

SIDECAR_SUFFIXES = (".wav", ".mp4", ".gif", ".txt")

# __call__ arguments a task records under another name: task -> {argument: recorded key}.
RECORDED_AS = {"image-to-text": {"images": "image"}}
# __call__ arguments never taken from a file: objects, not settings.
NOT_RECORDED = ("self", "generator", "streamer", "progress", "callback_on_step_end",
                "callback_on_step_end_tensor_inputs", "output_type", "num_images_per_prompt",
                "num_return_sequences", "num_videos_per_prompt",
                "num_waveforms_per_prompt")
# Settings recorded as lists of strings that are one call's argument (not a prompt list).
LIST_SETTINGS = ("stop_strings",)


def read_settings(path: str | Path) -> dict[str, Any]:
    """The settings recorded for an output file.

    Raises:
        InputError: the file is missing, or carries no settings (a PNG without the text chunk,
            another file without its sidecar JSON), or the JSON is unreadable.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"replay: {path} is a directory; give one output file")
    if not path.is_file():
        raise InputError(f"replay: no such file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".png":
        return read_png_metadata(path)
    sidecar = path if suffix == ".json" else path.with_suffix(".json")
    if suffix not in SIDECAR_SUFFIXES + (".json",):
        raise InputError(f"replay: cannot read settings from a {suffix or 'suffix-less'} file; "
                         f"give a PNG, or a {', '.join(SIDECAR_SUFFIXES)} file with its .json")
    try:
        settings = json.loads(sidecar.read_text(encoding="utf-8"))
    except OSError:
        raise InputError(f"replay: {path} has no settings file {sidecar.name} beside it") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"replay: {sidecar} is not valid JSON: {exc}") from None
    if not isinstance(settings, dict) or "task" not in settings:
        raise InputError(f"replay: {sidecar} records no task")
    return settings


def replay(path: str | Path, *, checkpoint: str | list[str] | None = None,
           out: str | Path = "out/replay", device: str = "cpu", overwrite: bool = False
           ) -> dict[str, Any]:
    """Regenerate ``path`` and compare.

    Args:
        checkpoint: The model that made it (default: the task's embedded one); for a composed
            task, ``"STEP=DIR"`` strings, one per step that did not use its default.
        out: The directory the rerun is written into.
        device: ``"cpu"``, ``"cuda"`` (``"cuda:N"``) or ``"mps"``.
        overwrite: Replace files of the names the rerun writes that are already in ``out``
            (default: refuse them before generating).

    Returns:
        ``{"task", "original", "replayed", "identical", "output", "written", "kwargs"}``
        (``identical``: same bytes, or for PNG and WAV the same decoded pixels or samples;
        ``output`` the pipeline's output, ``written`` the files written, ``kwargs`` the
        arguments it was called with).

    The pipeline runs in the recorded ``torch_dtype`` (float32 when none is recorded); a
    recorded ``device`` kind other than ``device``'s warns (see the module docstring).

    Raises:
        InputError: unreadable settings, a task whose inputs were not recorded (editing
            tasks need their input image), a checkpoint other than the one that made it,
            recorded settings the pipeline refuses (a ``torch_dtype`` among them), or files
            in ``out`` it would overwrite.
        CheckpointError: the checkpoint cannot be loaded.
    """
    path = Path(path)
    settings = read_settings(path)
    task = settings["task"]
    if task not in pipelines:
        raise InputError(f"replay: {path} was made by task '{task}', which is not registered "
                         f"here (a plugin that is not installed?)")
    cls = pipelines.get(task)
    composed = getattr(cls, "composed", False)
    if settings.get("sample") is None and settings.get("num_samples", 1) > 1:
        raise InputError(f"replay: {path} shows {settings['num_samples']} samples together (a "
                         "grid); replay one of the sample files (000.png, ...)")
    checkpoints = [checkpoint] if isinstance(checkpoint, (str, Path)) else list(checkpoint or [])
    if not composed and len(checkpoints) > 1:
        raise InputError(f"replay: {task} takes one --checkpoint, got {len(checkpoints)}")
    steps = settings.get("steps") if composed and isinstance(settings.get("steps"), dict) \
        else {}
    dtypes = {name: recorded_dtype(step, f"{path} (step {name})")
              for name, step in steps.items() if isinstance(step, dict)}
    dtype = recorded_dtype(settings, str(path))
    _warn_other_device(path, [settings] + [s for s in steps.values() if isinstance(s, dict)],
                       device)
    if composed:
        pipe = cls.from_checkpoint(checkpoints or None, device=device)
        for name, step_dtype in dtypes.items():  # each step in the dtype it ran in
            if step_dtype is not None and name in pipe.steps:
                pipe.steps[name].to(dtype=step_dtype)
        made = {name: (step or {}).get("checkpoint_id")
                for name, step in (settings.get("steps") or {}).items()}
        parts = [(f"step {name}", made.get(name), getattr(p, "checkpoint_id", None))
                 for name, p in pipe.steps.items()]
    else:
        pipe = load_pipeline(task, checkpoints[0] if checkpoints else None, device=device,
                             torch_dtype=dtype)
        parts = [("", settings.get("checkpoint_id", settings.get("checkpoint")),
                  getattr(pipe, "checkpoint_id", None))]
    for where, recorded, actual in parts:
        if recorded and actual and recorded != actual:
            raise InputError(f"replay: {path} was made{' in ' + where if where else ''} by "
                             f"checkpoint {recorded}, but the one loaded is {actual}; pass "
                             "--checkpoint with the model that made it"
                             + (" (STEP=DIR for each step)" if composed else ""))
    kwargs = call_kwargs(cls, task, settings)
    count = kwargs.get("num_samples", 1)
    check_overwrite(out, output_stems(count if isinstance(count, int) and 1 <= count <= 4096
                                      else 1), overwrite)
    with OutputFiles(out) as files:  # checked before generating; removed on failure
        output = pipe(**kwargs)
        written = write_outputs(output, files.out, produces=pipe.produces,
                                overwrite=overwrite)
    index = int(settings.get("sample") or 0)
    name = f"{index:03d}{path.suffix}" if path.suffix.lower() != ".json" else None
    replayed = Path(out) / name if name else None
    if replayed is not None and not replayed.is_file():
        raise InputError(f"replay: the rerun wrote no {name} to compare with {path} (its "
                         f"settings: sample {settings.get('sample')!r}, num_samples "
                         f"{settings.get('num_samples')!r})")
    identical = replayed is not None and _same(path, replayed)
    return {"task": task, "original": str(path), "replayed": str(replayed),
            "identical": identical, "output": output, "written": written, "kwargs": kwargs}


def recorded_dtype(settings: dict[str, Any], where: str) -> torch.dtype | None:
    """The ``torch_dtype`` ``settings`` record (a name such as ``"bfloat16"``), or ``None``
    when they record none (float32: files made before dtypes were recorded, and float32 runs).

    Raises:
        InputError: a recorded value that is not a dtype name, naming the accepted ones.
    """
    name = settings.get("torch_dtype")
    if name is None:
        return None
    if not isinstance(name, str) or name.removeprefix("torch.") not in DTYPES:
        raise InputError(f"replay: {where} records torch_dtype {excerpt(name)}, which is not "
                         f"a dtype these pipelines run in; expected one of "
                         f"{', '.join(map(repr, DTYPES))}")
    return check_dtype(name)


def _warn_other_device(path: Path, records: list[dict[str, Any]], device: str) -> None:
    """Warn when ``records`` (the settings, and a composed task's steps) say the file was made
    on another kind of device than ``device``."""
    kind = str(device).partition(":")[0]  # "cuda:1" -> "cuda" (checked when it loads)
    made = sorted({str(r.get("device", "cpu")) for r in records} - {kind})
    if made:
        warnings.warn(f"{path} was made on {' and '.join(made)}; replaying on {kind}, whose "
                      "kernels round differently, may not reproduce it exactly (replay with "
                      f"--device {made[0]} to use the same kind of device)", stacklevel=3)


def call_kwargs(cls, task: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``cls.__call__`` that ``settings`` record (by the names of
    its arguments, or :data:`RECORDED_AS`); unset (``None``) ones are left to their defaults,
    and progress bars are off.

    Raises:
        InputError: an argument without a default is not recorded (an editing task's image).
    """
    params = inspect.signature(cls.__call__).parameters
    recorded_as = RECORDED_AS.get(task, {})
    kwargs: dict[str, Any] = {}
    for name, param in params.items():
        if name in NOT_RECORDED or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        value = settings.get(recorded_as.get(name, name))
        if (name in LIST_SETTINGS and isinstance(value, list)) or (
                value is not None and not isinstance(value, (dict, list))):
            kwargs[name] = value
        elif param.default is inspect.Parameter.empty:
            raise InputError(f"replay: {task} needs its '{name}' input, which the file does "
                             f"not record (it records: {', '.join(settings)}); run `multimodal "
                             f"generate {task}` with those settings and the same {name}")
    if "progress" in params:
        kwargs["progress"] = False
    return kwargs


def _same(original: Path, replayed: Path) -> bool:
    if original.read_bytes() == replayed.read_bytes():
        return True
    suffix = original.suffix.lower()
    if suffix == ".png":
        with Image.open(original) as a, Image.open(replayed) as b:
            return np.array_equal(np.asarray(a), np.asarray(b))
    if suffix == ".wav":
        return np.array_equal(soundfile.read(str(original))[0], soundfile.read(str(replayed))[0])
    return False
