"""Text-to-video with latent video diffusion on the shared backbone.

The loop of text-to-image (:class:`~multimodal.pipelines.text_to_image.LatentDiffusionPipeline`)
over latent videos: start from Gaussian noise (s, t, l, y, x), denoise every frame together
with the spatio-temporal denoiser and a diffusers scheduler (Ho et al. 2022, "Video Diffusion
Models", https://arxiv.org/abs/2204.03458), guided by the prompt with classifier-free guidance
(Ho & Salimans 2022, https://arxiv.org/abs/2207.12598) whose unconditional and conditional
branches run in ONE batched forward; a negative prompt replaces the empty prompt in the
unconditional branch. The VAE then decodes the frames one by one.

Random draws: the initial noise (num_samples, t, l, y, x) from one ``torch.Generator`` seeded
with ``seed``, whatever each scheduler step draws from one generator per sample
(:func:`~multimodal.pipelines.base.sample_generators`), so a seed reproduces the clips exactly
and clip ``i`` is the same whatever ``num_samples`` is.

diffusers' conventions are taken beside the project's, as text-to-image takes them:
``output_type`` (TextToVideoSDPipeline's forms: ``"np"`` float32 frames in [0, 1] (s, t, h, w,
c), ``"pt"`` a float32 tensor in [0, 1] (s, t, c, h, w), ``"pil"`` one list of PIL frames per
clip; the default ``"uint8"`` keeps the project's uint8 arrays); a list of
prompts (and of negative prompts) runs in one batched loop, clips flat in prompt order, prompt
``i`` drawing from its own seed (:func:`~multimodal.pipelines.base.prompt_seed` of ``seed``,
recorded with its clips), so its clips are those it gives alone with that seed (up to the float
rounding of prompts padded to the longest); ``num_videos_per_prompt`` (diffusers'
TextToVideoSDPipeline's name of ``num_samples``); and a list of generators, one per clip, clip
``i`` drawing from ``generator[i]`` alone.

Prompts name an item and a motion ("a sneaker moving left"). A direction word the model never
saw in training ("diagonally", "in circles") is not an error: the clip is generated anyway,
following the item and whatever motion the model makes of the words.

Files (written by the video spec's writer through :func:`multimodal.outputs.write_outputs`,
not here): ``000.mp4`` (H.264 through imageio-ffmpeg; skipped with a warning when no ffmpeg is
available), ``000.gif``, ``000.json`` (prompt and settings) and, with ``strip``, ``000.png``
(the frames side by side, settings in a tEXt chunk).

Axes: s samples, b batch (2 s with guidance), t frames, n prompt tokens, d backbone width,
l latent channels, y x latent height and width, c channels, h w frame height and width.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
from einops import rearrange
from PIL import Image
from tqdm.auto import tqdm

from multimodal.modalities.video.vae import decode_video
from multimodal.modalities.video.files import gif_timing, mp4_padding
from multimodal.pipelines.base import (check_bool, check_float, check_generators, check_int,
                                       check_output_type, check_text, initial_noise, locate_sample,
                                       runtime_settings, samples_per_prompt)
from multimodal.pipelines.text_to_image import (CALLBACK_TENSOR_INPUTS, DEFAULT_GUIDANCE,
                                                DEFAULT_SCHEDULER, OUTPUT_TYPES,
                                                LatentDiffusionPipeline, StepCallback,
                                                check_finite, check_step_callback,
                                                run_step_callback)
from multimodal.registry import pipelines

DEFAULT_FPS = 10.0  # a whole number of GIF centiseconds per frame
MIN_FRAMES = 2
MAX_FPS = 100.0  # GIF's finest frame duration is 1/100 s
MIN_FPS = 0.1  # ten seconds a frame; far slower rates overflow GIF's and MP4's time fields


@dataclass
class VideoGenerationOutput:
    """What the text-to-video pipeline returns.

    A call with a list of prompts returns its clips flat in prompt order (diffusers' layout:
    ``num_videos_per_prompt`` clips of prompt 0, then of prompt 1, ...) and records
    ``prompt``, ``negative_prompt`` and ``seed`` per prompt (lists): :meth:`metadata` gives
    each clip its own prompt and seed, with which it replays alone, and :meth:`split` one
    output per prompt.

    Attributes:
        videos: The clips, as ``output_type`` says: ``"uint8"`` (default) one uint8 array per
            sample, (t, h, w) grayscale or (t, h, w, 3) RGB, 0..255; ``"pil"`` one list of PIL
            frames per sample; ``"np"`` one float32 array (s, t, h, w, c) in [0, 1]; ``"pt"``
            one float32 tensor (s, t, c, h, w) in [0, 1] (diffusers' TextToVideoSD forms).
        latents: The final latents (s, t, l, y, x) before decoding.
        fps: Frames per second the clips are meant to play at.
        task, prompt, negative_prompt, seed, num_frames, num_inference_steps, guidance_scale,
            scheduler, checkpoint_id: The settings used.
        steps_run: The scheduler steps that ran: ``num_inference_steps``, or fewer when a
            ``callback_on_step_end`` stopped the loop early (``pipe.interrupt = True``);
            ``None`` only in outputs not made by the pipeline's loop.
        num_videos_per_prompt: Clips of each prompt (one count per prompt; ``None``: all
            clips belong to the one prompt).
        output_type: The form of ``videos``.
        pixels: The uint8 clips whatever ``output_type`` is (what the writer writes; empty in
            outputs made with ``videos`` uint8 arrays directly).
        runtime: How the pipeline ran where that changes the numbers (``torch_dtype`` when
            not float32, ``device`` when not the CPU), written with every clip.
    """

    videos: list[np.ndarray]
    latents: torch.Tensor | None = field(repr=False, default=None)
    task: str = "text-to-video"
    prompt: str | list[str] = ""
    negative_prompt: str | list[str | None] | None = None
    seed: int | list[int | None] | None = None
    num_frames: int = 0
    fps: float = DEFAULT_FPS
    num_inference_steps: int = 0
    guidance_scale: float = 1.0
    scheduler: str = DEFAULT_SCHEDULER
    checkpoint_id: str = "none"
    steps_run: int | None = None
    num_videos_per_prompt: list[int] | None = None
    runtime: dict[str, str] = field(default_factory=dict)
    output_type: str = "uint8"
    pixels: list[np.ndarray] = field(repr=False, default_factory=list)

    def _locate(self, index: int) -> tuple[int | None, int, int]:
        """``(prompt index or None, sample within its prompt, clips of that prompt)``."""
        return locate_sample(self.prompt, self.num_videos_per_prompt, index, len(self.samples),
                             "clip")

    def metadata(self, index: int | None = None) -> dict[str, Any]:
        """The settings of sample ``index``, as written into its sidecar JSON.

        Where the files cannot hold them exactly it also says what they hold: ``gif_fps``, the
        GIF's real mean rate when centisecond frame durations cannot make ``fps`` exactly, and
        ``frame_size`` and ``mp4_padded_size`` ``[h, w]`` when the MP4's frames are padded to
        multiples of 16 (:func:`~multimodal.modalities.video.files.read_video_frames` crops
        them back to ``frame_size``).
        """
        prompt, negative, seed = self.prompt, self.negative_prompt, self.seed
        sample, count = index, len(self.samples)
        if index is not None:
            group, sample, count = self._locate(index)
            if group is not None:
                prompt, negative, seed = prompt[group], negative[group], seed[group]
        meta = {"task": self.task, "prompt": prompt, "negative_prompt": negative,
                "seed": seed, "sample": sample, "num_samples": count,
                "num_frames": self.num_frames, "fps": self.fps,
                "num_inference_steps": self.num_inference_steps,
                "guidance_scale": self.guidance_scale, "scheduler": self.scheduler,
                "checkpoint_id": self.checkpoint_id}
        if self.steps_run is not None:
            meta["steps_run"] = self.steps_run
        if self.samples:
            clip = self.samples[0 if index is None else index]
            real_fps = gif_timing(len(clip), self.fps)[1]
            if real_fps != self.fps:
                meta["gif_fps"] = real_fps
            padded = mp4_padding(clip.shape[1:3])
            if padded is not None:
                meta["frame_size"], meta["mp4_padded_size"] = list(clip.shape[1:3]), list(padded)
        meta.update(self.runtime)
        return meta

    def split(self) -> list[VideoGenerationOutput]:
        """One single-prompt output per prompt of a list call (itself, in a list, otherwise),
        each what the pipeline returns for that prompt alone with its recorded seed."""
        if not isinstance(self.prompt, list):
            return [self]
        outputs, start = [], 0
        for group, count in enumerate(self.num_videos_per_prompt):
            part = slice(start, start + count)
            start += count
            outputs.append(replace(
                self, videos=self.videos[part], prompt=self.prompt[group],
                negative_prompt=self.negative_prompt[group], seed=self.seed[group],
                latents=None if self.latents is None else self.latents[part],
                num_videos_per_prompt=None, pixels=self.pixels[part]))
        return outputs

    @property
    def samples(self) -> list[np.ndarray]:
        """The clips as uint8 arrays, one per sample (what the writer writes, at
        :attr:`fps`)."""
        return self.pixels if self.pixels else self.videos


def format_videos(clips: list[np.ndarray], output_type: str) -> Any:
    """uint8 clips (t, h, w) or (t, h, w, c) as ``output_type`` says (see
    :class:`VideoGenerationOutput`)."""
    if output_type == "uint8":
        return list(clips)
    if output_type == "pil":
        return [[Image.fromarray(frame) for frame in clip] for clip in clips]
    batch = np.stack([c if c.ndim == 4 else c[..., None] for c in clips])  # (s, t, h, w, c)
    batch = batch.astype(np.float32) / 255.0
    if output_type == "np":
        return batch
    return torch.from_numpy(rearrange(batch, "s t h w c -> s t c h w").copy())


@pipelines.register("text-to-video")
class TextToVideoPipeline(LatentDiffusionPipeline):
    """Generate short clips from a prompt (latent video diffusion, classifier-free guidance).

    Call it as ``pipe(prompt, *, negative_prompt=None, num_frames=None, fps=10.0,
    num_inference_steps=25, guidance_scale=4.0, num_samples=1, num_videos_per_prompt=None,
    seed=None, generator=None, scheduler=None, progress=True, output_type="uint8",
    callback_on_step_end=None)``; see :meth:`generate`. ``prompt`` may be a list (diffusers').

    Args:
        backbone: The shared Transformer (encodes prompts).
        denoiser: The video decoder (``latent_video_dit``).
        vae: The frame tokenizer (``video_vae`` or ``image_vae``).
        tokenizer: The text tokenizer.
        checkpoint_id: Recorded in outputs.
    """

    task = "text-to-video"
    produces = "video"
    # The frame VAE: the checkpoint's video_vae, else the image_vae (see frame_tokenizer).
    parts = {"backbone": "backbone", "denoiser": "decoders.video",
             "vae": ("tokenizers.video", "tokenizers.image"), "tokenizer": "tokenizers.text"}
    needs = ("a video decoder, a frame VAE and a text tokenizer (train e.g. "
             "configs/text_to_video_moving.yaml)")

    # -- the loop ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompt: str | list[str] = "", *,
                 negative_prompt: str | list[str | None] | None = None,
                 num_frames: int | None = None, fps: float = DEFAULT_FPS,
                 num_inference_steps: int = 25, guidance_scale: float = DEFAULT_GUIDANCE,
                 num_samples: int = 1, num_videos_per_prompt: int | None = None,
                 seed: int | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 scheduler: str = DEFAULT_SCHEDULER, progress: bool = True,
                 output_type: Literal["uint8", "pil", "np", "pt"] = "uint8",
                 callback_on_step_end: StepCallback | None = None,
                 callback_on_step_end_tensor_inputs: tuple[str, ...] = CALLBACK_TENSOR_INPUTS
                 ) -> VideoGenerationOutput:
        """Generate ``num_samples`` clips of ``num_frames`` frames (of each prompt).

        Args:
            prompt: What to show, e.g. "a sneaker moving left"; ``""`` samples
                unconditionally (from Python also a list: each shown, clips flat in prompt
                order, as diffusers).
            negative_prompt: What to steer away from (default none; with a prompt list, one
                for all or a list of one per prompt).
            num_frames: Frames per clip, 2 .. the denoiser's ``max_frames`` (default: the
                length it was trained on).
            fps: Frames per second of the written files, in [0.1, 100] (default 10).
            num_inference_steps: Scheduler steps (1 .. num_train_timesteps; default 25).
            guidance_scale: Classifier-free guidance weight >= 0; 1 turns guidance off, 0
                ignores the prompt (default 4.0).
            num_samples: Clips made per prompt (>= 1).
            num_videos_per_prompt: diffusers' name of ``num_samples`` (give one of the two).
            seed: Seed of the generator (random when neither it nor ``generator`` is given);
                prompt ``i`` of a list uses a seed derived from it (recorded per clip).
            generator: A CPU ``torch.Generator`` to draw from instead of ``seed`` (not with
                it: refused), or a list of one per clip (diffusers'): clip ``i``
                draws from ``generator[i]``.
            scheduler: ``ddpm``, ``ddim``, ``dpm_solver_multistep`` (default) or ``euler``.
            progress: Show a tqdm bar over the steps.
            output_type: ``"uint8"`` (default: uint8 arrays), ``"pil"``, ``"np"`` or ``"pt"``
                (diffusers' forms; see :class:`VideoGenerationOutput`).
            callback_on_step_end: diffusers' hook, called after every scheduler step as
                ``callback_on_step_end(pipe, step_index, timestep, callback_kwargs) -> dict``
                with ``callback_kwargs = {"latents": (s, t, l, y, x)}`` (a returned
                ``"latents"`` replaces them); ``pipe.interrupt = True`` stops after the step
                (the steps run are recorded as ``steps_run``, always). Anything else than a
                callable is refused before the first step.
            callback_on_step_end_tensor_inputs: Tensors in ``callback_kwargs`` (``latents``).

        Returns:
            :class:`VideoGenerationOutput` with ``num_samples`` clips per prompt (uint8
            (t, h, w) or (t, h, w, 3) by default; see ``output_type``).

        Raises:
            InputError: an argument outside the ranges above (the message names the limit);
                a prompt list that is empty or holds a non-string; a list argument (negative
                prompts, generators) of the wrong length; a seed given with a generator (or a
                list of them); a ``callback_on_step_end`` that is not callable or tensor
                inputs the loop does not have; an unknown ``output_type``.
            UnknownComponentError: an unknown scheduler name.
        """
        is_list = isinstance(prompt, (list, tuple))
        num_samples = samples_per_prompt(num_samples, num_videos_per_prompt,
                                         "num_videos_per_prompt")
        prompts, negatives, counts, seeds = self._check_lists(prompt, negative_prompt,
                                                              num_samples, seed)
        for p, n, c in zip(prompts, negatives, counts):
            steps, guidance_scale, _ = self._check_arguments(
                p, n, num_inference_steps, guidance_scale, c, 1.0)
        num_frames = self._check_frames(num_frames)
        fps = check_float("fps", fps, MIN_FPS, MAX_FPS)
        check_text("scheduler", scheduler, optional=True)
        check_bool("progress", progress)
        check_output_type(output_type, OUTPUT_TYPES)
        check_step_callback(callback_on_step_end, callback_on_step_end_tensor_inputs)
        sched = self.make_scheduler(scheduler)
        total = sum(counts)
        # each prompt's draws as it makes them alone (see text-to-image)
        generator = check_generators(generator, total, seeds) or generator
        noise, step_generators, seeds = initial_noise(
            (num_frames, *self.denoiser.frame_shape), counts, seeds, generator)
        device = self.device
        sched.set_timesteps(steps, device=device)
        latents = noise.to(device) * sched.init_noise_sigma  # (s, t, l, y, x)
        context, context_mask = self.prompt_context(prompts, negatives, counts, guidance_scale)
        timesteps = sched.timesteps
        self._interrupt, self._num_timesteps = False, len(timesteps)
        steps_run = len(timesteps)
        for i, t in enumerate(tqdm(timesteps, desc=self.task, disable=not progress,
                                   leave=False)):
            model_output = self.predict(latents, t, sched, context, context_mask, guidance_scale)
            latents = sched.step(model_output, t, latents,
                                 generator=step_generators).prev_sample
            latents = run_step_callback(self, callback_on_step_end, i, t, latents,
                                        callback_on_step_end_tensor_inputs)
            if self._interrupt and i < len(timesteps) - 1:  # diffusers' early stop
                steps_run = i + 1
                break
        check_finite(latents, guidance_scale)
        frames = self._to_uint8(
            decode_video(self.vae, latents).flatten(0, 1)).to(torch.uint8)  # ((s t), c, h, w)
        frames = rearrange(frames, "(s t) c h w -> s t h w c", s=total).numpy()
        clips = [clip[..., 0] if clip.shape[-1] == 1 else clip for clip in frames]
        return VideoGenerationOutput(
            videos=format_videos(clips, output_type), latents=latents.cpu(), task=self.task,
            prompt=list(prompts) if is_list else prompts[0],
            negative_prompt=list(negatives) if is_list else negatives[0],
            seed=list(seeds) if is_list else seeds[0], num_frames=num_frames, fps=float(fps),
            num_inference_steps=steps, guidance_scale=guidance_scale,
            scheduler=scheduler or DEFAULT_SCHEDULER, checkpoint_id=self.checkpoint_id,
            steps_run=steps_run, num_videos_per_prompt=list(counts) if is_list else None,
            runtime=runtime_settings(self), output_type=output_type, pixels=clips)

    __call__ = generate

    def _check_frames(self, num_frames: Any) -> int:
        limit = self.denoiser.max_frames
        if num_frames is None:
            return self.denoiser.num_frames
        return check_int("num_frames", num_frames, MIN_FRAMES, limit,
                         accepted=f"an integer from {MIN_FRAMES} (the minimum) to {limit} (the "
                                  "most this model supports: its max_frames)")
