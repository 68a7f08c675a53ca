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
whatever ``num_samples`` is. A list of prompts runs in one batched loop, each prompt drawing
from its own seed (:func:`~multimodal.pipelines.base.prompt_seed` of ``seed``, recorded), so
its images are the ones it gives alone with that seed (up to the float rounding of a batch
padded to the longest prompt: within one of 255 levels). diffusers' list of generators, one per
image, draws image ``i``'s noise from ``generator[i]`` alone, so it is the image a call with
``generator=generator[i]`` makes.

diffusers' names are taken beside the project's: ``num_images_per_prompt`` (``num_samples``),
``output_type``, ``callback_on_step_end(pipe, step_index, timestep, callback_kwargs)`` with
``pipe.interrupt = True`` to stop early, and ``pipe.to(device, dtype)``: the denoiser and the
backbone run in that dtype while the scheduler's latents and the VAE stay float32.

Image-to-image runs ``int(num_inference_steps * strength)`` steps of the schedule, and at
least one whenever ``strength > 0`` (diffusers' rule since 0.27; before, a small strength
returned the input unchanged); strength 0 runs none and returns the input. Outputs of every
task record the steps actually run as ``steps_run`` (the bumped single step, 0 for strength
0, fewer when a callback stopped the loop); replay ignores it, being no argument.

Sizes: every task takes diffusers' ``height`` and ``width`` in pixels (default: the size the
model was trained at, the VAE's ``image_size``, which may be a rectangle), each a multiple of
the VAE's down-sampling factor times the denoiser's own step (the UNet's down-sampling, the
DiT's patch side: :meth:`LatentDiffusionPipeline.size_limits`), from that multiple up to
:data:`MAX_SIZE_FACTOR` times the longer training side; anything else is refused naming what is
accepted. The initial noise is (num_samples, l, height / f, width / f); at the training size it
is the same draw as before ``height``/``width`` existed, so old seeds reproduce. Outputs record
height and width, so replay makes the same size. Sizes far from the training size run but are
out of what the model learnt.

Input images are read with Pillow as a viewer shows them (:func:`~multimodal.modalities.image.
files.load_image_array`): transparency (RGBA, LA, P with a transparent colour) is composited on
white, as the emoji training data is, for grey and colour models alike; 16-bit grey is scaled to
8 bits. They are then converted to the model's format: grayscale for a 1-channel model
(Fashion-MNIST, 32x32), RGB for a 3-channel one (emoji, 64x64), at ``height`` x ``width``
(default the training size); 28x28 images (Fashion-MNIST's size) are padded with black like the
training data of a 32x32 model, any other size (1x1 to Pillow's decompression-bomb limit, ~89
million pixels) is resized (bicubic; masks: nearest; the aspect ratio is not kept: give a
``height`` and ``width`` of the image's shape to keep it). A colour image given to a grayscale
model for inpainting is refused (the kept pixels could not stay unchanged); for image-to-image
it is converted to grayscale. Outputs are at ``height`` x ``width`` and the model's channels:
(h, w) for grayscale, (h, w, 3) for RGB; inpainting keeps the unmasked pixels of the converted
image exactly. Masks (:func:`~multimodal.modalities.image.files.load_mask_array`) must have the
image's size (else refused): black and white, white (> 127) = regenerate, black = keep, in any
grey mode (L, 1, grey RGB or P); one with transparency (RGBA, LA, P) that is not opaque
everywhere follows OpenAI's convention instead: clear = regenerate, opaque = keep. A colour mask
is refused.

Axes: s samples, b batch (2 s with guidance), n prompt tokens, d backbone width, l latent
channels, y x latent height and width, c image channels, h w image height and width.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Literal, Union

import numpy as np
import torch
from einops import rearrange
from PIL import Image
from tqdm.auto import tqdm

from multimodal.data.images import pil_to_array
from multimodal.errors import InputError, excerpt
from multimodal.modalities.image.files import load_image_array, load_mask_array
from multimodal.modalities.image.modality import encode_captions
from multimodal.modalities.image.schedulers import make_scheduler
from multimodal.pipelines.base import (Pipeline, check_bool, check_callable, check_float,
                                       check_generators, check_int, check_num_samples,
                                       check_output_type, check_prompts, check_seed,
                                       check_text, initial_noise, locate_sample, per_prompt,
                                       prompt_seed, runtime_settings, samples_per_prompt)
from multimodal.registry import pipelines
from multimodal.safety import policy_of

DEFAULT_SCHEDULER = "dpm_solver_multistep"
DEFAULT_GUIDANCE = 4.0
# The largest height or width a call may ask for: this many times the longer side the model was
# trained at (a guard on memory and time; the model learnt one size, far sizes are poor).
MAX_SIZE_FACTOR = 4

# ``callback_on_step_end(pipe, step_index, timestep, callback_kwargs) -> dict``: diffusers'
# convention, called after each scheduler step with ``{"latents": (s, l, y, x)}`` (the names in
# ``callback_on_step_end_tensor_inputs``); a returned ``"latents"`` replaces the latents, and
# setting ``pipe.interrupt = True`` stops after that step (diffusers' ``pipe._interrupt``).
StepCallback = Callable[[Any, int, torch.Tensor, dict], dict | None]
CALLBACK_FORM = "f(pipe, step_index, timestep, callback_kwargs) -> dict"
CALLBACK_TENSOR_INPUTS = ("latents",)
# What ``output_type`` may be: the project's uint8 arrays, or diffusers' three.
OUTPUT_TYPES = ("uint8", "pil", "np", "pt")

# What an image argument may be: a file path, a PIL image or a uint8 array (h, w[, c]).
ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]


# -- outputs and files ---------------------------------------------------------------------------
@dataclass
class ImageGenerationOutput:
    """What the image pipelines return.

    A call with a list of prompts returns its images flat in prompt order (diffusers' layout:
    ``num_images_per_prompt`` images of prompt 0, then of prompt 1, ...), and records the
    settings per prompt: ``prompt``, ``negative_prompt`` and ``seed`` are then lists (one per
    prompt) and :meth:`metadata` gives each image its own prompt and seed, with which it
    replays alone.

    Attributes:
        images: One image per sample, as ``output_type`` says: ``"uint8"`` (default) uint8
            arrays (h, w) grayscale or (h, w, 3) RGB, 0..255; ``"pil"`` PIL images; ``"np"`` one
            float32 array (s, h, w, c) in [0, 1]; ``"pt"`` one float32 tensor (s, c, h, w) in
            [0, 1] (diffusers' three).
        latents: The final latents (s, l, y, x) before decoding (``None`` when no step ran).
        task, prompt, negative_prompt, seed, num_inference_steps, guidance_scale, scheduler,
            checkpoint_id, strength: The settings used (``strength`` for editing tasks).
        height, width: The images' size in pixels (``None`` in outputs made before sizes
            were recorded).
        steps_run: The scheduler steps that ran: ``num_inference_steps`` (times
            ``strength`` for editing, at least one when ``strength > 0``); 0 when nothing ran;
            fewer when a ``callback_on_step_end`` stopped the loop (``pipe.interrupt =
            True``). ``None`` only in outputs not made by a pipeline's loop.
        num_images_per_prompt: Images of each prompt (one count per prompt; ``None``: all
            images belong to the one prompt).
        output_type: The form of ``images``.
        pixels: The uint8 images whatever ``output_type`` is (what the writer writes).
        runtime: How the pipeline ran where that changes the numbers (``torch_dtype`` when
            not float32, ``device`` when not the CPU; see
            :func:`~multimodal.pipelines.base.runtime_settings`), written with every image.
    """

    images: Any
    latents: torch.Tensor | None = field(repr=False, default=None)
    task: str = "text-to-image"
    prompt: str | list[str] = ""
    negative_prompt: str | list[str | None] | None = None
    seed: int | list[int | None] | None = None
    num_inference_steps: int = 0
    guidance_scale: float = 1.0
    scheduler: str = DEFAULT_SCHEDULER
    checkpoint_id: str = "none"
    strength: float | None = None
    height: int | None = None
    width: int | None = None
    steps_run: int | None = None
    num_images_per_prompt: list[int] | None = None
    output_type: str = "uint8"
    pixels: list[np.ndarray] = field(repr=False, default_factory=list)
    runtime: dict[str, str] = field(default_factory=dict)

    def _locate(self, index: int) -> tuple[int | None, int, int]:
        """``(prompt index or None, sample within its prompt, images of that prompt)``."""
        return locate_sample(self.prompt, self.num_images_per_prompt, index, len(self.samples),
                             "image")

    def metadata(self, index: int | None = None) -> dict[str, Any]:
        """The settings of sample ``index`` as written into its PNG (for a list call: its own
        prompt, negative prompt and seed, and its place among its prompt's images)."""
        prompt, negative, seed = self.prompt, self.negative_prompt, self.seed
        sample, count = index, len(self.samples)
        if index is not None:
            group, sample, count = self._locate(index)
            if group is not None:
                prompt, negative, seed = prompt[group], negative[group], seed[group]
        meta = {"task": self.task, "prompt": prompt, "negative_prompt": negative,
                "seed": seed, "sample": sample, "num_samples": count,
                "num_inference_steps": self.num_inference_steps,
                "guidance_scale": self.guidance_scale, "scheduler": self.scheduler,
                "checkpoint_id": self.checkpoint_id}
        if self.strength is not None:
            meta["strength"] = self.strength
        if self.height is not None:
            meta["height"], meta["width"] = self.height, self.width
        if self.steps_run is not None:
            meta["steps_run"] = self.steps_run
        meta.update(self.runtime)
        return meta

    def split(self) -> list[ImageGenerationOutput]:
        """One single-prompt output per prompt of a list call (itself, in a list, otherwise),
        each what the pipeline returns for that prompt alone with its recorded seed."""
        if not isinstance(self.prompt, list):
            return [self]
        outputs, start = [], 0
        images = self.images
        for group, count in enumerate(self.num_images_per_prompt):
            part = slice(start, start + count)
            start += count
            outputs.append(replace(
                self, images=images[part], prompt=self.prompt[group],
                negative_prompt=self.negative_prompt[group], seed=self.seed[group],
                latents=None if self.latents is None else self.latents[part],
                num_images_per_prompt=None, pixels=self.pixels[part]))
        return outputs

    @property
    def samples(self) -> list[np.ndarray]:
        """The images as uint8 arrays, one per sample (what the writer writes)."""
        return self.pixels if self.pixels else self.images

    def to_pil(self) -> list:
        """The samples as PIL images."""
        return [Image.fromarray(image) for image in self.samples]


def format_images(pixels: list[np.ndarray], output_type: str) -> Any:
    """uint8 images (h, w) or (h, w, c) as ``output_type`` says (see
    :class:`ImageGenerationOutput`)."""
    if output_type == "uint8":
        return list(pixels)
    if output_type == "pil":
        return [Image.fromarray(p) for p in pixels]
    batch = np.stack([p if p.ndim == 3 else p[..., None] for p in pixels]) if pixels else \
        np.zeros((0, 0, 0, 0), np.uint8)
    batch = batch.astype(np.float32) / 255.0  # (s, h, w, c) in [0, 1]
    if output_type == "np":
        return batch
    return torch.from_numpy(rearrange(batch, "s h w c -> s c h w").copy())


def check_step_callback(callback: Any, names: Any) -> None:
    """Refuse, before any step, a ``callback_on_step_end`` that is not callable and a
    ``callback_on_step_end_tensor_inputs`` that is not a list (tuple) of the tensors the loop
    has (:data:`CALLBACK_TENSOR_INPUTS`).

    Raises:
        InputError: naming the argument, the value and what is accepted.
    """
    check_callable("callback_on_step_end", callback, CALLBACK_FORM)
    check_tensor_inputs(names)


def check_tensor_inputs(names: Any) -> None:
    """Refuse ``callback_on_step_end_tensor_inputs`` naming a tensor the loop does not have.

    Raises:
        InputError: naming the unknown ones and the ones there are.
    """
    if not isinstance(names, (list, tuple)) or any(
            not isinstance(name, str) or name not in CALLBACK_TENSOR_INPUTS for name in names):
        raise InputError(f"callback_on_step_end_tensor_inputs must be a list of "
                         f"{list(CALLBACK_TENSOR_INPUTS)}, got {excerpt(names)}")


def run_step_callback(pipe, callback: StepCallback | None, index: int, timestep: torch.Tensor,
                      latents: torch.Tensor, names: Any) -> torch.Tensor:
    """Call ``callback(pipe, index, timestep, {name: tensor})`` after a step (diffusers'
    ``callback_on_step_end``) and return the latents it hands back (or ``latents``).

    Raises:
        InputError: it returned something other than a dict or ``None``.
    """
    if callback is None:
        return latents
    tensors = {"latents": latents}
    returned = callback(pipe, index, timestep, {k: tensors[k] for k in names})
    if returned is None:
        return latents
    if not isinstance(returned, dict):
        raise InputError(f"callback_on_step_end must be a callable {CALLBACK_FORM}: it "
                         f"returned {excerpt(returned)} at step {index}")
    return returned.get("latents", latents)


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

    @property
    def dtype(self) -> torch.dtype:
        """The denoiser's dtype (the loop's latents stay float32)."""
        return next(self.denoiser.parameters()).dtype

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
        # the denoiser runs in its own dtype (bf16/fp16 after .to(dtype=...)); the scheduler's
        # arithmetic stays in float32
        prediction = self.denoiser(model_input.to(self.dtype), timesteps, context,
                                   context_mask).float()
        if not guided:
            return prediction
        uncond, cond = prediction.chunk(2)
        return uncond + guidance_scale * (cond - uncond)

    def size_limits(self) -> tuple[int, int, tuple[int, int]]:
        """``(multiple, largest, (training height, training width))`` in pixels: ``height``
        and ``width`` must be multiples of ``multiple`` (the VAE's down-sampling factor times
        the denoiser's :attr:`~multimodal.modalities.image.denoiser.LatentDenoiser.
        size_multiple`) from ``multiple`` to ``largest`` (:data:`MAX_SIZE_FACTOR` times the
        longer training side)."""
        multiple = self.vae.downsample_factor * getattr(self.denoiser, "size_multiple", 1)
        trained = (self.vae.height, self.vae.width)
        largest = MAX_SIZE_FACTOR * max(trained)
        return multiple, largest - largest % multiple, trained

    def check_size(self, height: Any, width: Any) -> tuple[int, int]:
        """``(height, width)`` in pixels, ``None`` giving the training size.

        Raises:
            InputError: a side that is not an integer multiple of :meth:`size_limits`'s
                ``multiple`` within its range, naming what is accepted.
        """
        multiple, largest, trained = self.size_limits()
        accepted = (f"a multiple of {multiple} from {multiple} to {largest} pixels (the "
                    f"VAE's down-sampling factor {self.vae.downsample_factor} times the "
                    f"denoiser's {multiple // self.vae.downsample_factor}; at most "
                    f"{MAX_SIZE_FACTOR}x the longer side of the size the model was trained "
                    f"at, {trained[1]}x{trained[0]} (width x height), the default)")
        sides, wrong = [], []
        for name, value, default in (("height", height, trained[0]),
                                     ("width", width, trained[1])):
            value = default if value is None else value
            try:
                value = check_int(name, value, accepted=accepted)
            except InputError:
                wrong.append((name, value))
                continue
            if value % multiple or not multiple <= value <= largest:
                wrong.append((name, value))
            sides.append(value)
        if len(wrong) == 1:
            raise InputError(f"{wrong[0][0]} must be {accepted}, got {excerpt(wrong[0][1])}")
        if wrong:  # every wrong side in one message
            raise InputError(f"height and width must each be {accepted}, got height="
                             f"{excerpt(wrong[0][1])} and width={excerpt(wrong[1][1])}")
        return sides[0], sides[1]

    # -- the loop ---------------------------------------------------------------------------
    @property
    def interrupt(self) -> bool:
        """Set to ``True`` from a ``callback_on_step_end`` to stop the loop after that step
        (diffusers' ``pipe._interrupt``, which is the same flag); reset by every call."""
        return getattr(self, "_interrupt", False)

    @interrupt.setter
    def interrupt(self, value: bool) -> None:
        self._interrupt = bool(value)

    @property
    def num_timesteps(self) -> int:
        """Scheduler steps of the running (or last) call, as diffusers' pipelines say it."""
        return getattr(self, "_num_timesteps", 0)

    @torch.no_grad()
    def generate(self, prompt: str | list[str] = "", *,
                 negative_prompt: str | list[str | None] | None = None,
                 num_inference_steps: int = 25, guidance_scale: float = DEFAULT_GUIDANCE,
                 num_samples: int | list[int] = 1, seed: int | list[int | None] | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 scheduler: str | None = None,
                 progress: bool = True, image: ImageInput | None = None,
                 mask: ImageInput | None = None, strength: float = 1.0,
                 height: int | None = None, width: int | None = None,
                 output_type: str = "uint8",
                 callback_on_step_end: StepCallback | None = None,
                 callback_on_step_end_tensor_inputs: list[str] | tuple[str, ...] = ("latents",)
                 ) -> ImageGenerationOutput:
        """The loop behind every task's ``__call__``; see the module docstring.

        Args:
            prompt: What to draw; ``""`` samples unconditionally. A list draws every prompt in
                one batched loop (images flat in prompt order).
            negative_prompt: What to steer away from (replaces ``""`` in the unconditional
                branch of guidance); default none. With a prompt list: one string (for every
                prompt) or a list of one per prompt.
            num_inference_steps: Scheduler steps (1 .. num_train_timesteps; default 25).
            guidance_scale: Classifier-free guidance weight >= 0; 1 turns guidance off, 0
                ignores the prompt (default 4.0).
            num_samples: Images per prompt (>= 1); with a prompt list also a list of one count
                per prompt (the server's batches).
            seed: Seed of the generator (random when neither it nor ``generator`` is given).
                With a prompt list, prompt ``i`` uses :func:`prompt_seed` of it, or ``seed[i]``
                when a list is given; either way prompt ``i`` gives the images it gives alone
                with the seed recorded for it (up to float rounding of the padded batch).
            generator: A CPU ``torch.Generator`` to draw from instead of ``seed`` (not with
                it: refused), or a list of one per image (diffusers'; prompt-major):
                image ``i`` draws from ``generator[i]`` alone, as a call with that generator
                makes it.
            scheduler: A registered scheduler name (``ddpm``, ``ddim``, ``dpm_solver_multistep``,
                ``euler``); default DPM-Solver++.
            progress: Show a tqdm bar over the steps.
            image: Start image (path, PIL image or uint8 array) for editing tasks.
            mask: Inpainting mask of the image's size; white = regenerate, black = keep, or
                transparent = regenerate for a mask with alpha (see the module docstring).
            strength: Share of the schedule to run from the noised ``image``, in [0, 1].
            height, width: The images' size in pixels (default: the training size); an input
                image and mask are resized to it. See :meth:`check_size`.
            output_type: ``"uint8"`` (default), ``"pil"``, ``"np"`` or ``"pt"`` (see
                :class:`ImageGenerationOutput`).
            callback_on_step_end: diffusers' hook, called after every scheduler step as
                ``callback_on_step_end(pipe, step_index, timestep, callback_kwargs)`` with
                ``callback_kwargs = {"latents": (s, l, y, x)}``; a returned dict's
                ``"latents"`` replaces them; ``pipe.interrupt = True`` stops after the step
                (the steps run are recorded as ``steps_run``, always). Anything else than a
                callable is refused before the first step.
            callback_on_step_end_tensor_inputs: The tensors passed in ``callback_kwargs``
                (only ``"latents"`` exists).

        Returns:
            :class:`ImageGenerationOutput` with ``num_samples`` images per prompt, each
            ``height`` x ``width`` pixels.

        Raises:
            InputError: an argument outside the ranges above (a height or width that is not
                an accepted multiple, or too large), a mask whose size differs from
                the image or that is in colour, an unreadable or non-image file, a colour
                image to inpaint with a grayscale model (the channel mismatch), lists of the
                wrong length (a generator list: one per image), a prompt list that is empty or
                holds a non-string, a seed given with a generator (or a list of them), a
                ``callback_on_step_end`` that is not callable, an unknown ``output_type``.
            UnknownComponentError: an unknown scheduler name.
        """
        is_list = isinstance(prompt, (list, tuple))
        prompts, negatives, counts, seeds = self._check_lists(prompt, negative_prompt,
                                                              num_samples, seed)
        for p, n, c in zip(prompts, negatives, counts):
            steps, guidance_scale, strength = self._check_arguments(
                p, n, num_inference_steps, guidance_scale, c, strength)
        check_text("scheduler", scheduler, optional=True)
        check_bool("progress", progress)
        check_output_type(output_type, OUTPUT_TYPES)
        check_step_callback(callback_on_step_end, callback_on_step_end_tensor_inputs)
        height, width = self.check_size(height, width)
        factor = self.vae.downsample_factor
        latent_shape = (self.denoiser.latent_shape[0], height // factor, width // factor)
        sched = self.make_scheduler(scheduler)
        init_pixels, pixel_mask = self._load_inputs(image, mask, height, width)
        total = sum(counts)
        # The draws of each prompt, in order: its initial noise from its own generator, its
        # scheduler noise from one generator per sample, as it would draw alone.
        generator = check_generators(generator, total, seeds) or generator
        noise, step_generators, seeds = initial_noise(latent_shape, counts, seeds, generator)
        output = ImageGenerationOutput(
            images=[], task=self.task, prompt=list(prompts) if is_list else prompts[0],
            negative_prompt=list(negatives) if is_list else negatives[0],
            seed=list(seeds) if is_list else seeds[0], num_inference_steps=steps,
            guidance_scale=guidance_scale, scheduler=scheduler or DEFAULT_SCHEDULER,
            checkpoint_id=self.checkpoint_id, strength=strength if image is not None else None,
            height=height, width=width,
            num_images_per_prompt=list(counts) if is_list else None, output_type=output_type,
            runtime=runtime_settings(self))

        device = self.device
        sched.set_timesteps(steps, device=device)
        timesteps = sched.timesteps
        noise = noise.to(device)  # (s, l, y, x), float32: the scheduler's dtype
        x0 = latent_mask = None
        if init_pixels is not None:
            x0 = self.vae.encode(self._to_model_range(init_pixels)).float().to(device)
            x0 = x0.expand(total, -1, -1, -1)  # (s, l, y, x)
        if strength < 1.0:  # SDEdit: start part-way, from the noised image
            run = min(int(steps * strength), steps)
            if strength > 0 and run == 0:  # a small strength still runs one step
                run = 1
            start = steps - run
            timesteps = timesteps[start * sched.order:]
            if len(timesteps) == 0:  # strength 0: nothing to denoise
                output.steps_run = 0
                output.pixels = [self._to_output(init_pixels[0])] * total
                output.images = format_images(output.pixels, output_type)
                return output
            if hasattr(sched, "set_begin_index"):
                sched.set_begin_index(start * sched.order)
            latents = sched.add_noise(x0, noise, timesteps[:1].repeat(total))
        else:
            latents = noise * sched.init_noise_sigma
        if pixel_mask is not None:  # (1, 1, h, w) -> (1, 1, y, x): regenerate any touched cell
            factor = pixel_mask.shape[-1] // latents.shape[-1]
            latent_mask = torch.nn.functional.max_pool2d(pixel_mask, factor).to(device)

        context, context_mask = self.prompt_context(prompts, negatives, counts, guidance_scale)

        self._interrupt, self._num_timesteps = False, len(timesteps)
        output.steps_run = len(timesteps)
        for i, t in enumerate(tqdm(timesteps, desc=self.task, disable=not progress,
                                   leave=False)):
            model_output = self.predict(latents, t, sched, context, context_mask, guidance_scale)
            latents = sched.step(model_output, t, latents,
                                 generator=step_generators).prev_sample
            if latent_mask is not None:  # keep the known region on the noise level of t_next
                known = x0 if i == len(timesteps) - 1 else sched.add_noise(
                    x0, noise, timesteps[i + 1 : i + 2].repeat(total))
                latents = latent_mask * latents + (1 - latent_mask) * known
            latents = run_step_callback(self, callback_on_step_end, i, t, latents,
                                        callback_on_step_end_tensor_inputs)
            if self._interrupt and i < len(timesteps) - 1:  # diffusers' early stop
                output.steps_run = i + 1
                break

        check_finite(latents, guidance_scale)
        pixels = self._to_uint8(self.vae.decode(latents))  # (s, c, h, w)
        if pixel_mask is not None:  # the kept pixels, exactly
            keep = pixel_mask.to(torch.bool).logical_not().cpu()
            pixels = torch.where(keep, init_pixels, pixels)
        output.pixels = [self._to_output(p) for p in pixels]
        output.images = format_images(output.pixels, output_type)
        output.latents = latents.cpu()
        return output

    def _check_lists(self, prompt, negative_prompt, num_samples, seed
                     ) -> tuple[list[str], list[str | None], list[int], list[int | None]]:
        """One prompt, negative prompt, count and seed per prompt.

        Raises:
            InputError: a prompt that is not a string or a non-empty list of strings, or a
                list argument whose length is not the number of prompts (or a list argument
                without a prompt list).
        """
        prompts, is_list = check_prompts(prompt)
        if not is_list:
            for name, value in (("negative_prompt", negative_prompt),
                                ("num_samples", num_samples), ("seed", seed)):
                if isinstance(value, (list, tuple)):
                    raise InputError(f"{name} is a list but prompt is one string; give a list "
                                     "of prompts, one per item")
            return [prompt], [negative_prompt], [num_samples], [seed]
        negatives = per_prompt("negative_prompt", negative_prompt, len(prompts))
        if negatives is None:
            negatives = [negative_prompt] * len(prompts)
        else:
            for i, negative in enumerate(negatives):
                check_text(f"negative_prompt[{i}]", negative, optional=True)
        counts = per_prompt("num_samples", num_samples, len(prompts)) or \
            [num_samples] * len(prompts)
        seeds = per_prompt("seed", seed, len(prompts))
        if seeds is None:  # one seed: prompt i's derived from it; none: each draws its own
            base = check_seed(seed)
            seeds = [None if base is None else prompt_seed(base, i) for i in range(len(prompts))]
        return prompts, negatives, counts, seeds

    def prompt_context(self, prompts: list[str], negatives: list[str | None],
                       counts: list[int], guidance_scale: float
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt states of every sample, each prompt's encoded on its own (as it is alone)
        and padded to the longest: (b, n, d) and (b, n), the unconditional branch of every
        sample first when guidance runs (the layout :meth:`predict` reads)."""
        unconds = ["" if n is None else n for n in negatives]
        two = guidance_scale not in (0.0, 1.0) and any(u != p for u, p in zip(unconds, prompts))
        uncond_rows, cond_rows = [], []
        for prompt, uncond, count in zip(prompts, unconds, counts):
            if two:  # both branches, one batch
                both, both_mask = self.encode_prompts([uncond, prompt])  # (2, n, d), (2, n)
                uncond_rows += [(both[0], both_mask[0])] * count
                cond_rows += [(both[1], both_mask[1])] * count
            else:  # one branch: the prompt (scale 1), the unconditional one (scale 0), or equal
                one, one_mask = self.encode_prompts([uncond if guidance_scale == 0 else prompt])
                cond_rows += [(one[0], one_mask[0])] * count
        rows = uncond_rows + cond_rows
        length = max(states.shape[0] for states, _ in rows)
        context = torch.zeros(len(rows), length, rows[0][0].shape[-1], device=self.device,
                              dtype=rows[0][0].dtype)
        mask = torch.zeros(len(rows), length, dtype=torch.bool, device=self.device)
        for i, (states, states_mask) in enumerate(rows):
            context[i, : states.shape[0]] = states
            mask[i, : states.shape[0]] = states_mask
        return context, mask

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

    def _load_inputs(self, image, mask, height: int, width: int
                     ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(pixels (1, c, h, w) uint8-valued float, mask (1, 1, h, w) in {0, 1})`` at
        ``height`` x ``width``."""
        if image is None:
            if mask is not None:
                raise InputError("a mask needs an image to inpaint")
            return None, None
        channels, size = self.vae.in_channels, (height, width)
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
        raw_mask = load_mask_array(mask, what="mask")  # (h, w): 255 regenerate, 0 keep
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


def images_per_prompt(num_samples: Any, num_images_per_prompt: Any) -> Any:
    """``num_samples``, or diffusers' ``num_images_per_prompt`` when that is given.

    Raises:
        InputError: both given, with different values.
    """
    return samples_per_prompt(num_samples, num_images_per_prompt, "num_images_per_prompt")


# The three tasks: one explicit __call__ each (the signature a command line is derived from),
# all running LatentDiffusionPipeline.generate. diffusers' names are accepted beside the
# project's: a prompt list, num_images_per_prompt, output_type, callback_on_step_end.
@pipelines.register("text-to-image")
class TextToImagePipeline(LatentDiffusionPipeline):
    """Generate images from a prompt (latent diffusion with classifier-free guidance)."""

    task = "text-to-image"

    def __call__(self, prompt: str | list[str] = "", *,
                 negative_prompt: str | list[str | None] | None = None,
                 num_inference_steps: int = 25, guidance_scale: float = DEFAULT_GUIDANCE,
                 num_samples: int = 1, num_images_per_prompt: int | None = None,
                 height: int | None = None, width: int | None = None,
                 seed: int | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 scheduler: str = DEFAULT_SCHEDULER, progress: bool = True,
                 output_type: Literal["uint8", "pil", "np", "pt"] = "uint8",
                 callback_on_step_end: StepCallback | None = None,
                 callback_on_step_end_tensor_inputs: tuple[str, ...] = CALLBACK_TENSOR_INPUTS,
                 **editing: Any) -> ImageGenerationOutput:
        """Draw ``prompt`` (or every prompt of a list, in one batched loop).

        Args:
            prompt: What to draw; ``""`` samples unconditionally (from Python also a list:
                each drawn, images flat in prompt order, as diffusers).
            negative_prompt: What to steer away from (default none; with a prompt list, one
                for all or a list of one per prompt).
            num_inference_steps: Scheduler steps (1 .. num_train_timesteps; default 25).
            guidance_scale: Classifier-free guidance weight >= 0; 1 turns guidance off, 0
                ignores the prompt (default 4.0).
            num_samples: Images made per prompt (>= 1).
            num_images_per_prompt: diffusers' name of ``num_samples`` (give one of the two).
            height: Image height in pixels (default: the model's training height); a multiple
                of the VAE's down-sampling factor times the denoiser's (8 for the shipped
                models), up to 4x the longer training side.
            width: Image width in pixels (default: the model's training width); as height.
            seed: Seed of the generator (random when neither it nor ``generator`` is given);
                prompt ``i`` of a list uses a seed derived from it (recorded per image).
            generator: A CPU ``torch.Generator`` to draw from instead of ``seed`` (not with
                it: refused), or a list of one per image (diffusers'): image ``i``
                draws from ``generator[i]``.
            scheduler: ddpm, ddim, dpm_solver_multistep (default) or euler.
            progress: Show a tqdm bar over the steps.
            output_type: uint8 (default: uint8 arrays), pil, np or pt (diffusers' forms).
            callback_on_step_end: diffusers' ``f(pipe, step_index, timestep, callback_kwargs)
                -> dict`` after every step; ``pipe.interrupt = True`` stops early.
            callback_on_step_end_tensor_inputs: Tensors in ``callback_kwargs`` (``latents``).

        Returns:
            :class:`ImageGenerationOutput`; see :meth:`LatentDiffusionPipeline.generate`.

        Raises:
            InputError: an editing argument (``image``, ``mask``, ``strength``), naming the
                task that takes it; a ``height`` or ``width`` that is not an accepted multiple
                or is out of range (the message says which); any other bad argument (see
                :meth:`LatentDiffusionPipeline.generate`).
        """
        _refuse(self.task, editing, "image-to-image or inpainting")
        return self.generate(prompt, negative_prompt=negative_prompt,
                             num_inference_steps=num_inference_steps,
                             guidance_scale=guidance_scale,
                             num_samples=images_per_prompt(num_samples, num_images_per_prompt),
                             height=height, width=width, seed=seed, generator=generator,
                             scheduler=scheduler,
                             progress=progress, output_type=output_type,
                             callback_on_step_end=callback_on_step_end,
                             callback_on_step_end_tensor_inputs=(
                                 callback_on_step_end_tensor_inputs))


@pipelines.register("image-to-image")
class ImageToImagePipeline(LatentDiffusionPipeline):
    """Redraw an image toward a prompt (SDEdit): noise it to ``strength``, then denoise.

    ``strength`` 0 returns the image unchanged, 1 ignores it.
    """

    task = "image-to-image"

    def __call__(self, prompt: str | list[str] = "", *, image: ImageInput,
                 strength: float = 0.6, negative_prompt: str | list[str | None] | None = None,
                 num_inference_steps: int = 25, guidance_scale: float = DEFAULT_GUIDANCE,
                 num_samples: int = 1, num_images_per_prompt: int | None = None,
                 height: int | None = None, width: int | None = None,
                 seed: int | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 scheduler: str = DEFAULT_SCHEDULER, progress: bool = True,
                 output_type: Literal["uint8", "pil", "np", "pt"] = "uint8",
                 callback_on_step_end: StepCallback | None = None,
                 callback_on_step_end_tensor_inputs: tuple[str, ...] = CALLBACK_TENSOR_INPUTS,
                 **editing: Any) -> ImageGenerationOutput:
        """Redraw ``image`` toward ``prompt``.

        Args:
            prompt: What to draw (a list: each, from the same image).
            image: The image to redraw (PNG, JPEG; a path, PIL image or uint8 array);
                transparency is composited on white.
            strength: How far to move from the image, 0..1 (default 0.6).
            negative_prompt: What to steer away from (default none).
            num_inference_steps: Scheduler steps of the whole schedule (default 25).
            guidance_scale: Classifier-free guidance weight >= 0 (default 4.0).
            num_samples: Images made per prompt (>= 1).
            num_images_per_prompt: diffusers' name of ``num_samples`` (give one of the two).
            height: Output height in pixels (default: the model's training height); the image
                (and mask) is resized to it (aspect ratio not kept). Multiples as for
                text-to-image.
            width: Output width in pixels (default: the model's training width); as height.
            seed: Seed of the generator (random when neither it nor ``generator`` is given);
                prompt ``i`` of a list uses a seed derived from it (recorded per image).
            generator: A CPU ``torch.Generator`` to draw from instead of ``seed`` (not with
                it: refused), or a list of one per image (diffusers'): image ``i``
                draws from ``generator[i]``.
            scheduler: ddpm, ddim, dpm_solver_multistep (default) or euler.
            progress: Show a tqdm bar over the steps.
            output_type: uint8 (default: uint8 arrays), pil, np or pt (diffusers' forms).
            callback_on_step_end: diffusers' ``f(pipe, step_index, timestep, callback_kwargs)
                -> dict`` after every step; ``pipe.interrupt = True`` stops early.
            callback_on_step_end_tensor_inputs: Tensors in ``callback_kwargs`` (``latents``).

        Raises:
            InputError: a ``mask`` (inpainting takes one).
        """
        _refuse(self.task, editing, "inpainting")
        return self.generate(prompt, image=image, strength=strength,
                             negative_prompt=negative_prompt,
                             num_inference_steps=num_inference_steps,
                             guidance_scale=guidance_scale,
                             num_samples=images_per_prompt(num_samples, num_images_per_prompt),
                             height=height, width=width, seed=seed, generator=generator,
                             scheduler=scheduler,
                             progress=progress, output_type=output_type,
                             callback_on_step_end=callback_on_step_end,
                             callback_on_step_end_tensor_inputs=(
                                 callback_on_step_end_tensor_inputs))


@pipelines.register("inpainting")
class InpaintingPipeline(LatentDiffusionPipeline):
    """Regenerate the masked part of an image (white = regenerate), keeping the rest exactly."""

    task = "inpainting"

    def __call__(self, prompt: str | list[str] = "", *, image: ImageInput, mask: ImageInput,
                 strength: float = 1.0, negative_prompt: str | list[str | None] | None = None,
                 num_inference_steps: int = 25, guidance_scale: float = DEFAULT_GUIDANCE,
                 num_samples: int = 1, num_images_per_prompt: int | None = None,
                 height: int | None = None, width: int | None = None,
                 seed: int | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 scheduler: str = DEFAULT_SCHEDULER, progress: bool = True,
                 output_type: Literal["uint8", "pil", "np", "pt"] = "uint8",
                 callback_on_step_end: StepCallback | None = None,
                 callback_on_step_end_tensor_inputs: tuple[str, ...] = CALLBACK_TENSOR_INPUTS
                 ) -> ImageGenerationOutput:
        """Regenerate the white part of ``mask`` in ``image`` toward ``prompt``.

        Args:
            prompt: What to draw in the masked area (a list: each, in the same image).
            image: The image to edit (PNG, JPEG; a path, PIL image or uint8 array);
                transparency is composited on white.
            mask: A mask of the image's size: white = regenerate, black = keep (grey, L, 1
                or grey RGB); a mask with transparency: clear = regenerate, opaque = keep
                (OpenAI's); a colour mask is refused.
            strength: Share of the schedule to run in the masked area (default 1).
            negative_prompt: What to steer away from (default none).
            num_inference_steps: Scheduler steps (default 25).
            guidance_scale: Classifier-free guidance weight >= 0 (default 4.0).
            num_samples: Images made per prompt (>= 1).
            num_images_per_prompt: diffusers' name of ``num_samples`` (give one of the two).
            height: Output height in pixels (default: the model's training height); the image
                (and mask) is resized to it (aspect ratio not kept). Multiples as for
                text-to-image.
            width: Output width in pixels (default: the model's training width); as height.
            seed: Seed of the generator (random when neither it nor ``generator`` is given);
                prompt ``i`` of a list uses a seed derived from it (recorded per image).
            generator: A CPU ``torch.Generator`` to draw from instead of ``seed`` (not with
                it: refused), or a list of one per image (diffusers'): image ``i``
                draws from ``generator[i]``.
            scheduler: ddpm, ddim, dpm_solver_multistep (default) or euler.
            progress: Show a tqdm bar over the steps.
            output_type: uint8 (default: uint8 arrays), pil, np or pt (diffusers' forms).
            callback_on_step_end: diffusers' ``f(pipe, step_index, timestep, callback_kwargs)
                -> dict`` after every step; ``pipe.interrupt = True`` stops early.
            callback_on_step_end_tensor_inputs: Tensors in ``callback_kwargs`` (``latents``).
        """
        return self.generate(prompt, image=image, mask=mask, strength=strength,
                             negative_prompt=negative_prompt,
                             num_inference_steps=num_inference_steps,
                             guidance_scale=guidance_scale,
                             num_samples=images_per_prompt(num_samples, num_images_per_prompt),
                             height=height, width=width, seed=seed, generator=generator,
                             scheduler=scheduler,
                             progress=progress, output_type=output_type,
                             callback_on_step_end=callback_on_step_end,
                             callback_on_step_end_tensor_inputs=(
                                 callback_on_step_end_tensor_inputs))
