"""``multimodal replay FILE``: regenerate an output from the settings it carries.

Every output records its task, prompt, seed, settings and checkpoint id: a PNG in its text
chunk, a WAV, MP4, GIF or TXT in the sidecar JSON of the same stem (``000.wav`` ->
``000.json``). Replay reads them, loads the checkpoint (``--checkpoint``, default the task's
embedded one), refuses one whose id differs from the file's, runs the task's own command line
with the recorded settings into ``--out``, and compares the regenerated file with the original.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from multimodal.errors import InputError

SIDECAR_SUFFIXES = (".wav", ".mp4", ".gif", ".txt")


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
        from multimodal.modalities.image.files import read_png_metadata

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
           out: str | Path = "out/replay", device: str = "cpu") -> dict[str, Any]:
    """Regenerate ``path`` and compare.

    Args:
        checkpoint: The model that made it (default: the task's embedded one); for a composed
            task, ``"STEP=DIR"`` strings, one per step that did not use its default.

    Returns:
        ``{"task", "original", "replayed", "identical"}`` (``identical``: same bytes, or for
        PNG and WAV the same decoded pixels or samples).

    Raises:
        InputError: unreadable settings, a task whose inputs were not recorded (editing
            tasks need their input image), or a checkpoint other than the one that made it.
        CheckpointError: the checkpoint cannot be loaded.
    """
    from multimodal.pipelines import load_pipeline
    from multimodal.registry import pipelines

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
    parser = argparse.ArgumentParser(prog=f"multimodal replay ({task})")
    cls.add_cli_arguments(parser)
    argv = _argv_for(parser, settings, out)
    if composed:
        pipe = cls.from_checkpoint(checkpoints or None, device=device)
        made = {name: (step or {}).get("checkpoint_id")
                for name, step in (settings.get("steps") or {}).items()}
        parts = [(f"step {name}", made.get(name), getattr(p, "checkpoint_id", None))
                 for name, p in pipe.steps.items()]
    else:
        pipe = load_pipeline(task, checkpoints[0] if checkpoints else None, device=device)
        parts = [("", settings.get("checkpoint_id", settings.get("checkpoint")),
                  getattr(pipe, "checkpoint_id", None))]
    for where, recorded, actual in parts:
        if recorded and actual and recorded != actual:
            raise InputError(f"replay: {path} was made{' in ' + where if where else ''} by "
                             f"checkpoint {recorded}, but the one loaded is {actual}; pass "
                             "--checkpoint with the model that made it"
                             + (" (STEP=DIR for each step)" if composed else ""))
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        raise InputError(f"replay: {task} needs inputs the file does not record "
                         f"(settings: {', '.join(settings)})") from None
    pipe.run_cli(args)
    index = int(settings.get("sample") or 0)
    name = f"{index:03d}{path.suffix}" if path.suffix.lower() != ".json" else None
    replayed = Path(out) / name if name else None
    if replayed is not None and not replayed.is_file():
        raise InputError(f"replay: the rerun wrote no {name} to compare with {path} (its "
                         f"settings: sample {settings.get('sample')!r}, num_samples "
                         f"{settings.get('num_samples')!r})")
    identical = replayed is not None and _same(path, replayed)
    return {"task": task, "original": str(path), "replayed": str(replayed),
            "identical": identical}


def _argv_for(parser: argparse.ArgumentParser, settings: dict, out: str | Path) -> list[str]:
    """Command-line arguments that reproduce ``settings`` (keys named like the options)."""
    values = dict(settings)
    if "do_sample" in values:
        values["greedy"] = not values["do_sample"]
    argv = ["--out", str(out)]
    for action in parser._actions:
        if not action.option_strings or action.dest in ("out", "help"):
            continue
        value = values.get(action.dest)
        if value is None:
            continue
        if isinstance(action, argparse._StoreTrueAction):
            if value is True:
                argv.append(action.option_strings[0])
        elif not isinstance(value, (dict, list)):
            argv += [action.option_strings[0], str(value)]
    if "no_progress" in {a.dest for a in parser._actions}:
        argv.append("--no-progress")
    return argv


def _same(original: Path, replayed: Path) -> bool:
    if original.read_bytes() == replayed.read_bytes():
        return True
    import numpy as np

    suffix = original.suffix.lower()
    if suffix == ".png":
        from PIL import Image

        with Image.open(original) as a, Image.open(replayed) as b:
            return np.array_equal(np.asarray(a), np.asarray(b))
    if suffix == ".wav":
        import soundfile

        return np.array_equal(soundfile.read(str(original))[0], soundfile.read(str(replayed))[0])
    return False
