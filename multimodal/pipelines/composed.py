"""Tasks composed from other pipelines in YAML alone.

A task file names the pipelines one prompt runs through (``steps``) and a registered
combiner that turns their outputs into one piece of media (``combine``)::

    # multimodal/tasks/text-to-audiovisual.yaml
    task: text-to-audiovisual
    description: a clip of the prompt with the prompt spoken as its sound track, in one MP4
    steps:
      video: {task: text-to-video, num_inference_steps: 25}
      audio: {task: text-to-audio}
    combine: {type: mux_audio_video, video: video, audio: audio}

Every ``*.yaml`` in ``multimodal/tasks/`` becomes a task at start-up (``multimodal list
pipelines``); ``multimodal generate path/to/task.yaml --prompt P`` runs any other task file.
Each step's other keys are keyword arguments of its pipeline's ``__call__``, checked against
its signature; each step loads its own checkpoint (default: the step task's embedded one;
``--checkpoint STEP=DIR`` picks another). A combiner says what it makes in its ``produces``
attribute (``"audiovisual"``), the name :func:`multimodal.outputs.write_outputs` finds the
writer of the composed output by.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from multimodal.config import read_yaml_file
from multimodal.errors import CheckpointError, ConfigError, InputError, did_you_mean
from multimodal.pipelines import load_pipeline
from multimodal.pipelines.base import (check_bool, check_seed, check_text, draw_seed,
                                       runtime_settings)
from multimodal.registry import combiners, pipelines
from multimodal.safety import policy_of

TASKS_DIR = Path(__file__).resolve().parent.parent / "tasks"


# -- combiners ---------------------------------------------------------------------------------
@dataclass
class AudioVisualClip:
    """A clip with its sound track, of equal duration (what ``mux_audio_video`` makes; the
    ``audiovisual`` writer muxes it into one MP4).

    Attributes:
        frames: (t, h, w[, c]) uint8 frames.
        fps: Frames per second (slowed where the speech is longer than the clip).
        audio: (s,) float32 waveform in [-1, 1].
        sample_rate: Hz.
    """

    frames: np.ndarray
    fps: float
    audio: np.ndarray
    sample_rate: int


@dataclass
class ComposedOutput:
    """What a composed pipeline returns.

    Attributes:
        media: What the combiner made from the steps' outputs (e.g. an
            :class:`AudioVisualClip`).
        settings: The prompt, seed, each step's settings and checkpoint, and the combiner.
        outputs: Each step's own output object, by step name.
    """

    media: Any
    settings: dict[str, Any]
    outputs: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def samples(self) -> list[Any]:
        """The one combined sample."""
        return [self.media]

    def metadata(self, index: int | None = 0) -> dict[str, Any]:
        """The settings written with the combined files."""
        return dict(self.settings)


@combiners.register("mux_audio_video")
def mux_audio_video(outputs: dict[str, Any], *, video: str = "video", audio: str = "audio"
                    ) -> AudioVisualClip:
    """A clip and a sound track of the same duration, from a text-to-video and a text-to-audio
    output (the ``audiovisual`` writer muxes them: H.264 video and an AAC sound track).

    The sound track is the speech, padded with silence to the clip's length; speech longer
    than the clip slows the clip's frame rate to ``frames / speech seconds``, so no word is
    cut. The first sample of each is used.

    Args:
        outputs: Step outputs by step name.
        video, audio: The names of the video and the audio step.

    Returns:
        :class:`AudioVisualClip`.

    Raises:
        ConfigError: ``video`` or ``audio`` names no step.
    """
    for role, name in (("video", video), ("audio", audio)):
        if name not in outputs:
            raise ConfigError(f"combine.{role}: no step named '{name}'"
                              f"{did_you_mean(name, outputs)}; steps: {', '.join(outputs)}")
    clip, sound = outputs[video], outputs[audio]
    frames, fps = clip.videos[0], float(clip.fps)
    wave, rate = np.asarray(sound.audios[0], dtype=np.float32), int(sound.sample_rate)
    track = mux_track(wave, rate, len(frames), fps)
    fps = len(frames) * rate / len(track)  # unchanged unless the speech is longer
    return AudioVisualClip(frames=frames, fps=fps, audio=track, sample_rate=rate)


# What each argument's step must produce (a pipeline's ``produces``), checked when a task file
# is read, before anything is generated; and what the combiner makes (its writer's name).
mux_audio_video.inputs = {"video": "video", "audio": "audio"}
mux_audio_video.produces = "audiovisual"


def mux_track(wave: np.ndarray, sample_rate: int, num_frames: int, fps: float) -> np.ndarray:
    """The sound track for a clip of ``num_frames`` at ``fps``: ``wave`` padded with silence
    to the clip's duration, or left whole when it is longer (the clip then slows down)."""
    clip_samples = int(round(num_frames / fps * sample_rate))
    if len(wave) >= clip_samples:
        return wave
    return np.concatenate([wave, np.zeros(clip_samples - len(wave), np.float32)])


# -- task files --------------------------------------------------------------------------------
_TOP = ("task", "description", "steps", "combine")


def read_task_file(path: str | Path) -> dict:
    """Read and check a task file.

    Raises:
        ConfigError: unreadable YAML, unknown keys, a step naming a pipeline that does not
            exist (did-you-mean), a step argument its pipeline does not take, an unknown
            combiner, or combiner arguments it does not take. Every problem is listed.
    """
    path = Path(path)
    data = read_yaml_file(path, "task file")  # a regular file, within parse_yaml's limits
    if not isinstance(data, dict):
        raise ConfigError("a task file is a mapping with task, steps and combine",
                          source=str(path))
    problems = [f"unknown key '{k}'{did_you_mean(k, _TOP)}; accepted: {', '.join(_TOP)}"
                for k in data if k not in _TOP]
    name = data.get("task")
    if not isinstance(name, str) or not name:
        problems.append("task: the task's name is missing, e.g. task: text-to-audiovisual")
    steps = data.get("steps")
    if not isinstance(steps, dict) or not steps:
        problems.append("steps: missing; a mapping {step name: {task: PIPELINE, ...}}")
        steps = {}
    for step, section in steps.items():
        if not isinstance(section, dict) or "task" not in section:
            problems.append(f"steps.{step}: needs task: PIPELINE")
            continue
        task = section["task"]
        if task not in pipelines or getattr(pipelines.get(task), "composed", False):
            known = [n for n in pipelines.names()
                     if not getattr(pipelines.get(n), "composed", False)]
            problems.append(f"steps.{step}.task: no pipeline '{task}'{did_you_mean(task, known)};"
                            f" pipelines: {', '.join(known)}")
            continue
        accepted = _call_params(pipelines.get(task))
        for key in section:
            if key != "task" and key not in accepted:
                problems.append(f"steps.{step}.{key}: {task} takes no such argument"
                                f"{did_you_mean(key, accepted)}; accepted: {', '.join(accepted)}")
    combine = data.get("combine")
    if not isinstance(combine, dict) or "type" not in combine:
        problems.append(f"combine: missing; {{type: COMBINER, ...}}, combiners: "
                        f"{', '.join(combiners.names())}")
    elif combine["type"] not in combiners:
        problems.append(f"combine.type: no combiner '{combine['type']}'"
                        f"{did_you_mean(combine['type'], combiners.names())}; combiners: "
                        f"{', '.join(combiners.names())}")
    else:
        combiner = combiners.get(combine["type"])
        params = inspect.signature(combiner).parameters
        accepted = [p for p in params if p != "outputs"]
        inputs = getattr(combiner, "inputs", {})
        for key in accepted:
            value = combine.get(key, params[key].default)
            if key not in inputs or not isinstance(value, str) or value not in steps:
                continue
            task = steps[value].get("task") if isinstance(steps[value], dict) else None
            made = getattr(pipelines.get(task), "produces", None) if task in pipelines else None
            if made is not None and made != inputs[key]:
                problems.append(f"combine.{key}: step '{value}' runs {task}, which makes {made};"
                                f" {combine['type']} needs {inputs[key]} there")
        for key, value in combine.items():
            if key == "type":
                continue
            if key not in accepted:
                problems.append(f"combine.{key}: {combine['type']} takes no such argument; "
                                f"accepted: {', '.join(accepted)}")
            elif isinstance(value, str) and value not in steps:
                problems.append(f"combine.{key}: no step named '{value}'"
                                f"{did_you_mean(value, steps)}; steps: {', '.join(steps)}")
    if problems:
        raise ConfigError(problems, source=str(path))
    return data


def _call_params(cls) -> list[str]:
    """Keyword arguments of a pipeline's ``__call__`` a step may set (not the prompt)."""
    params = inspect.signature(cls.__call__).parameters
    return [n for n, p in params.items() if n not in ("self", "prompt", "seed", "generator",
                                                       "progress")
            and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


# -- the pipeline ------------------------------------------------------------------------------
class ComposedPipeline:
    """Runs one prompt through each step's pipeline and combines their outputs.

    Subclassed once per task file (:func:`composed_task`); ``definition`` is the checked file.

    Args:
        steps: ``{step name: loaded pipeline}``.
    """

    composed = True
    definition: dict = {}
    task = "composed"
    produces = ""  # the combiner's ``produces`` (set per task file)

    def __init__(self, steps: dict[str, Any]):
        self.steps = steps

    def to(self, *args: Any, **kwargs: Any) -> "ComposedPipeline":
        """Move or cast every step's pipeline (see :meth:`Pipeline.to`).

        Raises:
            InputError: a dtype or device a step refuses.
        """
        for pipe in self.steps.values():
            pipe.to(*args, **kwargs)
        return self

    def compile(self, **compile_kwargs: Any) -> "ComposedPipeline":
        """Compile every step's networks in place (see :meth:`Pipeline.compile`).

        Raises:
            InputError: ``torch.compile`` cannot run here.
        """
        for pipe in self.steps.values():
            pipe.compile(**compile_kwargs)
        return self

    @classmethod
    def from_checkpoint(cls, checkpoint: Any = None, *, device: str = "cpu"
                        ) -> "ComposedPipeline":
        """Load every step's pipeline.

        Args:
            checkpoint: ``None`` (each step's embedded default), a ``{step: directory}``
                mapping, or a list of ``"step=directory"`` strings (the CLI's
                ``--checkpoint``).

        Raises:
            InputError: a checkpoint for a step the task does not have, or a malformed pair.
            CheckpointError: a step's checkpoint is missing or lacks what it needs.
        """
        chosen = cls.parse_checkpoints(checkpoint)
        loaded = {}
        for name, section in cls.definition["steps"].items():
            try:  # each with its own checkpoint's safety policy
                loaded[name] = load_pipeline(section["task"], chosen.get(name), device=device)
            except CheckpointError as exc:
                hint = "" if name in chosen else \
                    f" (CLI: --checkpoint {name}=DIR gives this step a checkpoint)"
                raise CheckpointError(f"{cls.task}, step '{name}': {exc}{hint}") from None
        return cls(loaded)

    @classmethod
    def parse_checkpoints(cls, checkpoint: Any) -> dict[str, str]:
        steps = cls.definition["steps"]
        if checkpoint is None:
            return {}
        if isinstance(checkpoint, (str, Path)):
            checkpoint = [str(checkpoint)]
        if isinstance(checkpoint, dict):
            pairs = dict(checkpoint)
        else:
            pairs = {}
            for item in checkpoint:
                step, sep, path = str(item).partition("=")
                if not sep or not path:
                    raise InputError(f"{cls.task}: --checkpoint takes STEP=DIR, one per step "
                                     f"({', '.join(steps)}), got {item!r}")
                pairs[step] = path
        unknown = [s for s in pairs if s not in steps]
        if unknown:
            raise InputError(f"{cls.task}: no step named {unknown[0]!r}"
                             f"{did_you_mean(unknown[0], steps)}; steps: {', '.join(steps)}")
        return pairs

    def __call__(self, prompt: str, *, seed: int | None = None, progress: bool = True
                 ) -> ComposedOutput:
        """Run every step on ``prompt`` (each seeded with ``seed``), then combine.

        Args:
            prompt: What every step generates from.
            seed: Seed of every step (random when not given; recorded).
            progress: Show the steps' progress bars.

        Raises:
            InputError: bad prompt or settings (from the step that rejects them).
        """
        check_text("prompt", prompt)
        seed = check_seed(seed)
        check_bool("progress", progress)
        for pipe in self.steps.values():  # refuse before any step generates
            policy_of(pipe).check(prompt, task=self.task)
        if seed is None:
            seed = draw_seed()
        outputs, settings = {}, {}
        for name, section in self.definition["steps"].items():
            kwargs = {k: v for k, v in section.items() if k != "task"}
            pipe = self.steps[name]
            if "progress" in inspect.signature(type(pipe).__call__).parameters:
                kwargs["progress"] = progress
            outputs[name] = pipe(prompt, seed=seed, **kwargs)
            settings[name] = {"task": section["task"], **{k: v for k, v in kwargs.items()
                                                          if k != "progress"},
                              "checkpoint_id": getattr(pipe, "checkpoint_id", "none"),
                              **runtime_settings(pipe)}  # its dtype, for replay
        combine = dict(self.definition["combine"])
        combiner: Callable = combiners.get(combine.pop("type"))
        media = combiner(outputs, **combine)
        metadata = {"task": self.task, "prompt": prompt, "seed": seed, "steps": settings,
                    "combine": self.definition["combine"]["type"]}
        return ComposedOutput(media=media, settings=metadata, outputs=outputs)


def composed_task(path: str | Path) -> type[ComposedPipeline]:
    """A :class:`ComposedPipeline` subclass for the task file at ``path``.

    Raises:
        ConfigError: see :func:`read_task_file`.
    """
    definition = read_task_file(path)
    name = definition["task"]
    if name in pipelines and not getattr(pipelines.get(name), "composed", False):
        raise ConfigError(f"task: '{name}' is already a pipeline; give the composed task a name "
                          "of its own", source=str(path))
    doc = definition.get("description") or f"composed task from {Path(path).name}"
    combiner = combiners.get(definition["combine"]["type"])
    return type(f"Composed[{name}]", (ComposedPipeline,),
                {"definition": definition, "task": name, "__doc__": doc,
                 "produces": getattr(combiner, "produces", ""), "__module__": __name__})


def register_task_files(directory: Path = TASKS_DIR) -> None:
    """Register every ``*.yaml`` task file in ``directory`` as a pipeline."""
    for path in sorted(directory.glob("*.yaml")):
        cls = composed_task(path)
        pipelines.register(cls.task, cls, owner=f"{path.name} (composed task)")


register_task_files()
