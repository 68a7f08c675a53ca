"""Text-to-image, image-to-image and inpainting with latent diffusion on the shared backbone.

One loop serves the three tasks (:class:`LatentDiffusionPipeline`):

* text-to-image: start from Gaussian noise in latent space and denoise with a diffusers
  scheduler (Ho et al. 2020, DDPM, https://arxiv.org/abs/2006.11239; Rombach et al. 2022,
  LDM, https://arxiv.org/abs/2112.10752), guided by the prompt's backbone states with
  classifier-free guidance (Ho & Salimans 2022, https://arxiv.org/abs/2207.12598):
  ``eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)``, the unconditional and
  conditional predictions made in ONE batched forward. A negative prompt replaces the empty
  prompt in the unconditional branch.
* image-to-image (SDEdit, Meng et al. 2021, https://arxiv.org/abs/2108.01073): encode the
  image, noise it to ``strength`` of the way along the schedule, and denoise toward the new
  prompt. Strength 0 runs no step and returns the input unchanged; strength 1 ignores it.
* inpainting (the latent blend of RePaint, Lugmayr et al. 2022,
  https://arxiv.org/abs/2201.09865, without resampling; diffusers' "legacy" inpainting): after
  every step the latents outside the mask are replaced by the original latents noised to the
  next timestep; at the end the original pixels outside the mask are pasted back, so they are
  unchanged exactly.

The empty prompt ``""`` samples unconditionally (it is the caption the model saw for dropped
captions in training). Random draws: the initial noise (num_samples, l, y, x) from one
``torch.Generator`` seeded with ``seed``; whatever each scheduler step draws (DDPM's and
Euler's noise) from one generator per sample (:func:`~multimodal.pipelines.base.
sample_generators`), so a seed reproduces the samples exactly and sample ``i`` is the same
whatever ``num_samples`` is.

Image-to-image runs ``int(num_inference_steps * strength)`` steps of the schedule, and at
least one whenever ``strength > 0`` (diffusers' rule since 0.27; before, a small strength
returned the input unchanged); strength 0 runs none and returns the input. Outputs record the
steps actually run as ``steps_run`` where that is not ``int(num_inference_steps * strength)``
(the bumped single step) or is 0.

Input images are read with Pillow and converted to the model's format: grayscale for a
1-channel model (Fashion-MNIST, 32x32), RGB for a 3-channel one (emoji, 64x64), at the VAE's
image size; 28x28 images (Fashion-MNIST's size) are padded with black like the training data
of a 32x32 model, any other size is resized (bicubic; masks: nearest). A colour image given to
a grayscale model for inpainting is refused (the kept pixels could not stay unchanged); for
image-to-image it is converted to grayscale. Outputs are at the model's resolution and channels:
(h, w) for grayscale, (h, w, 3) for RGB. Masks: white (> 127) = regenerate, black = keep; a
mask must have the image's size.

Axes: s samples, b batch (2 s with guidance), n prompt tokens, d backbone width, l latent
channels, y x latent height and width, c image channels, h w image height and width.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Union

import numpy as np
import torch
from einops import rearrange, repeat
from PIL import Image
from tqdm.auto import tqdm

from multimodal.data.images import pil_to_array
from multimodal.errors import InputError
from multimodal.modalities.image.files import load_image_array
from multimodal.modalities.image.modality import encode_captions
from multimodal.modalities.image.schedulers import make_scheduler
from multimodal.pipelines.base import (Pipeline, check_bool, check_float, check_int,
                                       check_num_samples, check_text, sample_generators, seeded)
from multimodal.registry import pipelines
from multimodal.safety import policy_of

DEFAULT_SCHEDULER = "dpm_solver_multistep"
DEFAULT_GUIDANCE = 4.0

# ``callback_on_step_end(step, num_steps, latents)``: called after each scheduler step (as
# diffusers' ``callback_on_step_end``), e.g. to decode a preview or to stop by raising.
StepCallback = Callable[[int, int, torch.Tensor], None]

# What an image argument may be: a file path, a PIL image or a uint8 array (h, w[, c]).
ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]


# -- outputs and files ---------------------------------------------------------------------------
@dataclass
class ImageGenerationOutput:
    """What the image pipelines return.

    Attributes:
        images: One uint8 array per sample, (h, w) grayscale or (h, w, 3) RGB, 0..255.
        latents: The final latents (s, l, y, x) before decoding (``None`` when no step ran).
        task, prompt, negative_prompt, seed, num_inference_steps, guidance_scale, scheduler,
            checkpoint_id, strength: The settings used (``strength`` for editing tasks).
        steps_run: The scheduler steps that ran, where it is not what ``num_inference_steps``
            and ``strength`` say (``None``: as they say); 0 when nothing ran.
    """

    images: list[np.ndarray]
    latents: torch.Tensor | None = field(repr=False, default=None)
    task: str = "text-to-image"
    prompt: str = ""
    negative_prompt: str | None = None
    seed: int | None = None
    num_inference_steps: int = 0
    guidance_scale: float = 1.0
    scheduler: str = DEFAULT_SCHEDULER
    checkpoint_id: str = "none"
    strength: float | None = None
    steps_run: int | None = None

    def metadata(self, index: int | None = None) -> dict[str, Any]:
        """The settings of sample ``index`` as written into its PNG."""
        meta = {"task": self.task, "prompt": self.prompt, "negative_prompt": self.negative_prompt,
                "seed": self.seed, "sample": index, "num_samples": len(self.images),
                "num_inference_steps": self.num_inference_steps,
                "guidance_scale": self.guidance_scale, "scheduler": self.scheduler,
                "checkpoint_id": self.checkpoint_id}
        if self.strength is not None:
            meta["strength"] = self.strength
        if self.steps_run is not None:
            meta["steps_run"] = self.steps_run
        return meta

    @property
    def samples(self) -> list[np.ndarray]:
        """The images, one per sample (what the writer writes)."""
        return self.images

    def to_pil(self) -> list:
        """The samples as PIL images."""
        return [Image.fromarray(image) for image in self.images]


# -- the shared pipeline ---------------------------------------------------------------------
class LatentDiffusionPipeline(Pipeline):
    """Latent diffusion on the shared backbone: the sampling loop shared by the three tasks.

    Args:
        backbone: The shared Transformer (encodes prompts).
        denoiser: The image decoder (``latent_unet`` or ``latent_dit``).
        vae: The image tokenizer (``image_vae``).
        tokenizer: The text tokenizer.
        checkpoint_id: Recorded in outputs.

    Attributes:
        batch_guidance: Run the unconditional and conditional branches of classifier-free
            guidance in one batched forward (default ``True``; ``False`` runs two forwards,
            for benchmarks).
    """

    task = "text-to-image"
    produces = "image"  # what its outputs hold: the spec whose writer writes them
    parts = {"backbone": "backbone", "denoiser": "decoders.image", "vae": "tokenizers.image",
             "tokenizer": "tokenizers.text"}
    needs = ("an image decoder, an image_vae and a text tokenizer (train e.g. "
             "configs/text_to_image_fashion.yaml)")

    def __init__(self, *, backbone, denoiser, vae, tokenizer, checkpoint_id: str = "none"):
        self.backbone, self.denoiser, self.vae, self.tokenizer = backbone, denoiser, vae, tokenizer
        self.checkpoint_id = checkpoint_id
        self.batch_guidance = True

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    # -- building blocks --------------------------------------------------------------------
    def make_scheduler(self, name: str | None = None):
        """A fresh diffusers scheduler registered as ``name`` (default DPM-Solver++), built
        from the denoiser's training noise schedule.

        Raises:
            UnknownComponentError: no scheduler of that name (with a did-you-mean).
        """
        return make_scheduler(name or DEFAULT_SCHEDULER, self.denoiser.noise_schedule)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone states of prompts, padded together: ``(context (k, n, d), mask (k, n))``.

        Prompts longer than the backbone's context are cut at the end.
        """
        limit = self.backbone.max_seq_len
        ids, mask, cut = encode_captions(self.tokenizer, prompts, max_len=limit)
        if cut:
            warnings.warn(f"a prompt is longer than the backbone's context ({limit} tokens); "
                          f"keeping its first {limit}", stacklevel=3)
        ids, mask = ids.to(self.device), mask.to(self.device)
        return self.backbone(ids), mask

    def predict(self, latents: torch.Tensor, t: torch.Tensor, scheduler, context: torch.Tensor,
                context_mask: torch.Tensor, guidance_scale: float) -> torch.Tensor:
        """The guided model output for one step.

        Args:
            latents: (s, l, y, x) current latents.
            t: The scheduler's timestep (a 0-d tensor).
            context, context_mask: (s, n, d) and (s, n) for one branch, or (2 s, n, d) and
                (2 s, n) with the unconditional branch first for guidance.
            guidance_scale: The classifier-free guidance weight (used with two branches).

        Returns:
            (s, l, y, x) ``eps`` or ``v``, as the denoiser predicts.
        """
        guided = context.shape[0] == 2 * latents.shape[0]
        if guided and not self.batch_guidance:
            half = latents.shape[0]
            uncond = self.predict(latents, t, scheduler, context[:half], context_mask[:half], 1.0)
            cond = self.predict(latents, t, scheduler, context[half:], context_mask[half:], 1.0)
            return uncond + guidance_scale * (cond - uncond)
        model_input = torch.cat([latents, latents]) if guided else latents  # (b, l, y, x)
        model_input = scheduler.scale_model_input(model_input, t)
        timesteps = t.to(self.device).expand(model_input.shape[0])
        prediction = self.denoiser(model_input, timesteps, context, context_mask)
        if not guided:
            return prediction
        uncond, cond = prediction.chunk(2)
        return uncond + guidance_scale * (cond - uncond)

    # -- the loop ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompt: str = "", *, negative_prompt: str | None = None,
                 num_inference_steps: int = 25, guidance_scale: float = DEFAULT_GUIDANCE,
                 num_samples: int = 1, seed: int | None = None,
                 generator: torch.Generator | None = None, scheduler: str | None = None,
                 progress: bool = True, image: ImageInput | None = None,
                 mask: ImageInput | None = None, strength: float = 1.0,
                 callback_on_step_end: StepCallback | None = None) -> ImageGenerationOutput:
        """The loop behind every task's ``__call__``; see the module docstring.

        Args:
            prompt: What to draw; ``""`` samples unconditionally.
            negative_prompt: What to steer away from (replaces ``""`` in the unconditional
                branch of guidance); default none.
            num_inference_steps: Scheduler steps (1 .. num_train_timesteps; default 25).
            guidance_scale: Classifier-free guidance weight >= 0; 1 turns guidance off, 0
                ignores the prompt (default 4.0).
            num_samples: Images made together (>= 1).
            seed: Seed of the generator (random when neither it nor ``generator`` is given).
            generator: A CPU ``torch.Generator`` to draw from instead of ``seed``.
            scheduler: A registered scheduler name (``ddpm``, ``ddim``, ``dpm_solver_multistep``,
                ``euler``); default DPM-Solver++.
            progress: Show a tqdm bar over the steps.
            image: Start image (path, PIL image or uint8 array) for editing tasks.
            mask: Inpainting mask of the image's size; white = regenerate.
            strength: Share of the schedule to run from the noised ``image``, in [0, 1].
            callback_on_step_end: Called after every scheduler step as
                ``callback_on_step_end(step, num_steps, latents)`` with the current latents
                (s, l, y, x) (diffusers' hook: previews, progress, cancelling by raising).

        Returns:
            :class:`ImageGenerationOutput` with ``num_samples`` images.

        Raises:
            InputError: an argument outside the ranges above, a mask whose size differs from
                the image, an unreadable or non-image file, a colour image to inpaint with a
                grayscale model (the channel mismatch).
            UnknownComponentError: an unknown scheduler name.
        """
        steps, guidance_scale, strength = self._check_arguments(
            prompt, negative_prompt, num_inference_steps, guidance_scale, num_samples, strength)
        check_text("scheduler", scheduler, optional=True)
        check_bool("progress", progress)
        sched = self.make_scheduler(scheduler)
        init_pixels, pixel_mask = self._load_inputs(image, mask)
        generator, seed = seeded(seed, generator)
        step_generators = sample_generators(seed, generator, num_samples)
        output = ImageGenerationOutput(
            images=[], task=self.task, prompt=prompt, negative_prompt=negative_prompt, seed=seed,
            num_inference_steps=steps, guidance_scale=guidance_scale,
            scheduler=scheduler or DEFAULT_SCHEDULER, checkpoint_id=self.checkpoint_id,
            strength=strength if image is not None else None)

        device = self.device
        sched.set_timesteps(steps, device=device)
        timesteps = sched.timesteps
        noise = torch.randn((num_samples, *self.denoiser.latent_shape),
                            generator=generator).to(device)  # (s, l, y, x)
        x0 = latent_mask = None
        if init_pixels is not None:
            x0 = self.vae.encode(self._to_model_range(init_pixels)).to(device)
            self.denoiser.check_latents(x0)
            x0 = x0.expand(num_samples, -1, -1, -1)  # (s, l, y, x)
        if strength < 1.0:  # SDEdit: start part-way, from the noised image
            run = min(int(steps * strength), steps)
            if strength > 0 and run == 0:  # a small strength still runs one step
                run = output.steps_run = 1
            start = steps - run
            timesteps = timesteps[start * sched.order:]
            if len(timesteps) == 0:  # strength 0: nothing to denoise
                output.steps_run = 0
                output.images = [self._to_output(init_pixels[0])] * num_samples
                return output
            if hasattr(sched, "set_begin_index"):
                sched.set_begin_index(start * sched.order)
            latents = sched.add_noise(x0, noise, timesteps[:1].repeat(num_samples))
        else:
            latents = noise * sched.init_noise_sigma
        if pixel_mask is not None:  # (1, 1, h, w) -> (1, 1, y, x): regenerate any touched cell
            factor = pixel_mask.shape[-1] // latents.shape[-1]
            latent_mask = torch.nn.functional.max_pool2d(pixel_mask, factor).to(device)

        uncond = "" if negative_prompt is None else negative_prompt
        if guidance_scale not in (0.0, 1.0) and uncond != prompt:  # both branches, one batch
            both, both_mask = self.encode_prompts([uncond, prompt])  # (2, n, d), (2, n)
            context = repeat(both, "two n d -> (two s) n d", s=num_samples)
            context_mask = repeat(both_mask, "two n -> (two s) n", s=num_samples)
        else:  # one branch: the prompt (scale 1), the unconditional one (scale 0), or equal
            one, one_mask = self.encode_prompts([uncond if guidance_scale == 0 else prompt])
            context = repeat(one, "1 n d -> s n d", s=num_samples)
            context_mask = repeat(one_mask, "1 n -> s n", s=num_samples)

        for i, t in enumerate(tqdm(timesteps, desc=self.task, disable=not progress,
                                   leave=False)):
            model_output = self.predict(latents, t, sched, context, context_mask, guidance_scale)
            latents = sched.step(model_output, t, latents,
                                 generator=step_generators).prev_sample
            if latent_mask is not None:  # keep the known region on the noise level of t_next
                known = x0 if i == len(timesteps) - 1 else sched.add_noise(
                    x0, noise, timesteps[i + 1 : i + 2].repeat(num_samples))
                latents = latent_mask * latents + (1 - latent_mask) * known
            if callback_on_step_end is not None:
                callback_on_step_end(i, len(timesteps), latents)

        check_finite(latents, guidance_scale)
        pixels = self._to_uint8(self.vae.decode(latents))  # (s, c, h, w)
        if pixel_mask is not None:  # the kept pixels, exactly
            keep = pixel_mask.to(torch.bool).logical_not().cpu()
            pixels = torch.where(keep, init_pixels, pixels)
        output.images = [self._to_output(p) for p in pixels]
        output.latents = latents.cpu()
        return output

    # -- input checks and conversions -------------------------------------------------------
    def _check_arguments(self, prompt, negative_prompt, steps, guidance_scale, num_samples,
                         strength) -> tuple[int, float, float]:
        """``(steps, guidance_scale, strength)`` checked (see :meth:`generate`'s Raises)."""
        check_text("prompt", prompt)
        check_text("negative_prompt", negative_prompt, optional=True)
        policy_of(self).check(prompt, task=getattr(self, "task", ""))
        steps = check_int("num_inference_steps", steps, 1, self.denoiser.num_train_timesteps)
        check_num_samples(num_samples)
        guidance_scale = check_float(
            "guidance_scale", guidance_scale, 0.0,
            accepted="a finite number >= 0 (1 turns guidance off, 0 ignores the prompt)")
        strength = check_float("strength", strength, 0.0, 1.0,
                               accepted="in [0, 1] (0 keeps the image, 1 ignores it)")
        return steps, guidance_scale, strength

    @property
    def _image_format(self) -> tuple[int, int]:
        return self.vae.in_channels, self.vae.image_size

    def _load_inputs(self, image, mask) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(pixels (1, c, h, w) uint8-valued float, mask (1, 1, h, w) in {0, 1})``."""
        if image is None:
            if mask is not None:
                raise InputError("a mask needs an image to inpaint")
            return None, None
        channels, size = self._image_format
        raw = load_image_array(image, what="image")
        if mask is not None and channels == 1 and has_colour(raw):
            raise InputError(
                "channel mismatch: this checkpoint's image model is grayscale (1 channel) but "
                f"the image to inpaint is in colour ({raw.shape[2]} channels); inpainting keeps "
                "the unmasked pixels exactly, which a grayscale model cannot do in colour. Use "
                "a colour (3-channel) checkpoint, e.g. one trained with "
                "configs/text_to_image_emoji.yaml, or give a grayscale image")
        pixels = pil_to_array(Image.fromarray(raw), size=size, channels=channels)
        pixels = torch.from_numpy(pixels.copy()).float()[None]  # (1, c, h, w), 0..255
        if mask is None:
            return pixels, None
        raw_mask = load_image_array(mask, what="mask")
        if raw_mask.shape[:2] != raw.shape[:2]:
            raise InputError(f"the mask is {raw_mask.shape[1]}x{raw_mask.shape[0]} pixels but "
                             f"the image is {raw.shape[1]}x{raw.shape[0]}; give a mask of the "
                             "image's size (white = regenerate, black = keep)")
        mask_pixels = pil_to_array(Image.fromarray(raw_mask), size=size, channels=1,
                                   resample="nearest")
        return pixels, torch.from_numpy((mask_pixels > 127).astype(np.float32))[None]

    @staticmethod
    def _to_model_range(pixels: torch.Tensor) -> torch.Tensor:
        return pixels / 127.5 - 1.0

    @staticmethod
    def _to_uint8(images: torch.Tensor) -> torch.Tensor:
        """(s, c, h, w) in [-1, 1] -> uint8-valued float 0..255 on the CPU."""
        return ((images.float().cpu() + 1.0) * 127.5).round().clamp(0, 255)

    @staticmethod
    def _to_output(pixels: torch.Tensor) -> np.ndarray:
        """(c, h, w) 0..255 -> uint8 (h, w) or (h, w, c)."""
        array = pixels.to(torch.uint8).numpy()
        return array[0] if array.shape[0] == 1 else rearrange(array, "c h w -> h w c")


def has_colour(pixels: np.ndarray) -> bool:
    """Whether a uint8 image (h, w) or (h, w, c) holds colour: three or more channels that are
    not all equal (a grayscale picture saved as RGB has none)."""
    if pixels.ndim != 3 or pixels.shape[2] < 3:
        return False
    rgb = pixels[..., :3]
    return bool((rgb != rgb[..., :1]).any())


def check_finite(latents: torch.Tensor, guidance_scale: float) -> None:
    """Refuse to decode latents that left the numbers (a guidance scale so large that the
    prediction overflowed): they would decode to a black image, written as if all went well.

    Raises:
        InputError: naming the guidance scale.
    """
    if not bool(torch.isfinite(latents).all()):
        raise InputError(f"sampling diverged (the latents hold inf or NaN) with guidance_scale="
                         f"{guidance_scale:g}; use a smaller guidance_scale (e.g. 1 to 10)")


def _refuse(task: str, editing: dict[str, Any], other: str) -> None:
    """Reject the keyword arguments a task's ``__call__`` caught in ``**editing``: an editing
    argument names the task that takes it (``InputError``), anything else is a ``TypeError``
    as for any function."""
    for name in editing:
        if name in ("image", "mask", "strength"):
            raise InputError(f"{task} takes no {name}; use {other}")
        raise TypeError(f"{task} got an unexpected keyword argument '{name}'")


# The three tasks: one explicit __call__ each (the signature a command line is derived from),
# all running LatentDiffusionPipeline.generate.
@pipelines.register("text-to-image")
class TextToImagePipeline(LatentDiffusionPipeline):
    """Generate images from a prompt (latent diffusion with classifier-free guidance)."""

    task = "text-to-image"

    def __call__(self, prompt: str = "", *, negative_prompt: str | None = None,
                 num_inference_steps: int = 25, guidance_scale: float = DEFAULT_GUIDANCE,
                 num_samples: int = 1, seed: int | None = None,
                 generator: torch.Generator | None = None,
                 scheduler: str = DEFAULT_SCHEDULER, progress: bool = True,
                 callback_on_step_end: StepCallback | None = None, **editing: Any
                 ) -> ImageGenerationOutput:
        """Draw ``prompt``.

        Args:
            prompt: What to draw; ``""`` samples unconditionally.
            negative_prompt: What to steer away from (default none).
            num_inference_steps: Scheduler steps (1 .. num_train_timesteps; default 25).
            guidance_scale: Classifier-free guidance weight >= 0; 1 turns guidance off, 0
                ignores the prompt (default 4.0).
            num_samples: Images made together (>= 1).
            seed: Seed of the generator (random when neither it nor ``generator`` is given).
            generator: A CPU ``torch.Generator`` to draw from instead of ``seed``.
            scheduler: ddpm, ddim, dpm_solver_multistep (default) or euler.
            progress: Show a tqdm bar over the steps.
            callback_on_step_end: ``f(step, num_steps, latents)`` after every step.

        Returns:
            :class:`ImageGenerationOutput`; see :meth:`LatentDiffusionPipeline.generate`.

        Raises:
            InputError: an editing argument (``image``, ``mask``, ``strength``), naming the
                task that takes it.
        """
        _refuse(self.task, editing, "image-to-image or inpainting")
        return self.generate(prompt, negative_prompt=negative_prompt,
                             num_inference_steps=num_inference_steps,
                             guidance_scale=guidance_scale, num_samples=num_samples, seed=seed,
                             generator=generator, scheduler=scheduler, progress=progress,
                             callback_on_step_end=callback_on_step_end)


@pipelines.register("image-to-image")
class ImageToImagePipeline(LatentDiffusionPipeline):
    """Redraw an image toward a prompt (SDEdit): noise it to ``strength``, then denoise.

    ``strength`` 0 returns the image unchanged, 1 ignores it.
    """

    task = "image-to-image"

    def __call__(self, prompt: str = "", *, image: ImageInput, strength: float = 0.6,
                 negative_prompt: str | None = None, num_inference_steps: int = 25,
                 guidance_scale: float = DEFAULT_GUIDANCE, num_samples: int = 1,
                 seed: int | None = None, generator: torch.Generator | None = None,
                 scheduler: str = DEFAULT_SCHEDULER, progress: bool = True,
                 callback_on_step_end: StepCallback | None = None, **editing: Any
                 ) -> ImageGenerationOutput:
        """Redraw ``image`` toward ``prompt``.

        Args:
            prompt: What to draw.
            image: The image to redraw (PNG, JPEG; a path, PIL image or uint8 array).
            strength: How far to move from the image, 0..1 (default 0.6).
            negative_prompt: What to steer away from (default none).
            num_inference_steps: Scheduler steps of the whole schedule (default 25).
            guidance_scale: Classifier-free guidance weight >= 0 (default 4.0).
            num_samples: Images made together (>= 1).
            seed: Seed of the generator (random when neither it nor ``generator`` is given).
            generator: A CPU ``torch.Generator`` to draw from instead of ``seed``.
            scheduler: ddpm, ddim, dpm_solver_multistep (default) or euler.
            progress: Show a tqdm bar over the steps.
            callback_on_step_end: ``f(step, num_steps, latents)`` after every step.

        Raises:
            InputError: a ``mask`` (inpainting takes one).
        """
        _refuse(self.task, editing, "inpainting")
        return self.generate(prompt, image=image, strength=strength,
                             negative_prompt=negative_prompt,
                             num_inference_steps=num_inference_steps,
                             guidance_scale=guidance_scale, num_samples=num_samples, seed=seed,
                             generator=generator, scheduler=scheduler, progress=progress,
                             callback_on_step_end=callback_on_step_end)


@pipelines.register("inpainting")
class InpaintingPipeline(LatentDiffusionPipeline):
    """Regenerate the masked part of an image (white = regenerate), keeping the rest exactly."""

    task = "inpainting"

    def __call__(self, prompt: str = "", *, image: ImageInput, mask: ImageInput,
                 strength: float = 1.0, negative_prompt: str | None = None,
                 num_inference_steps: int = 25, guidance_scale: float = DEFAULT_GUIDANCE,
                 num_samples: int = 1, seed: int | None = None,
                 generator: torch.Generator | None = None,
                 scheduler: str = DEFAULT_SCHEDULER, progress: bool = True,
                 callback_on_step_end: StepCallback | None = None) -> ImageGenerationOutput:
        """Regenerate the white part of ``mask`` in ``image`` toward ``prompt``.

        Args:
            prompt: What to draw in the masked area.
            image: The image to edit (PNG, JPEG; a path, PIL image or uint8 array).
            mask: A mask of the image's size: white = regenerate, black = keep.
            strength: Share of the schedule to run in the masked area (default 1).
            negative_prompt: What to steer away from (default none).
            num_inference_steps: Scheduler steps (default 25).
            guidance_scale: Classifier-free guidance weight >= 0 (default 4.0).
            num_samples: Images made together (>= 1).
            seed: Seed of the generator (random when neither it nor ``generator`` is given).
            generator: A CPU ``torch.Generator`` to draw from instead of ``seed``.
            scheduler: ddpm, ddim, dpm_solver_multistep (default) or euler.
            progress: Show a tqdm bar over the steps.
            callback_on_step_end: ``f(step, num_steps, latents)`` after every step.
        """
        return self.generate(prompt, image=image, mask=mask, strength=strength,
                             negative_prompt=negative_prompt,
                             num_inference_steps=num_inference_steps,
                             guidance_scale=guidance_scale, num_samples=num_samples, seed=seed,
                             generator=generator, scheduler=scheduler, progress=progress,
                             callback_on_step_end=callback_on_step_end)
