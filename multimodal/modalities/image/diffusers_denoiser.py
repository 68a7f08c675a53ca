"""A pretrained diffusers ``UNet2DConditionModel`` from a local folder as the image decoder
(``decoders.image: {type: diffusers_denoiser, path: DIR}``): a Stable Diffusion style latent
UNet (Rombach et al. 2022, LDM, https://arxiv.org/abs/2112.10752) conditioned on the shared
backbone's states of the prompt instead of the text encoder it was trained with.

The UNet's cross-attention reads the backbone's states (b, n, d) directly when its conditioning
width (``cross_attention_dim``, or ``encoder_hid_dim`` where the UNet projects its text input
itself) is the backbone's width ``d``; otherwise through a learned linear projection
``context_proj`` (d -> the UNet's width), which starts untrained: train it, alone
(``train.freeze: [decoders.image.net]``) or with the UNet (all of it, or LoRA adapters of its
linear layers through ``train.lora.modules``).

It must fit the image tokenizer: ``in_channels`` and ``out_channels`` are the VAE's latent
channels (an inpainting UNet's 9 inputs or a learned variance's doubled outputs are refused),
and ``sample_size`` the VAE's latent size ``(y, x)``; both are checked when the model is built,
naming both values. The noise schedule (``num_train_timesteps``, ``beta_start``, ``beta_end``,
``beta_schedule``) and ``prediction_type`` (``epsilon`` or ``v_prediction``) come from the
scheduler the UNet was trained with: ``scheduler/scheduler_config.json`` beside the UNet's
folder (the layout of a diffusers pipeline folder, which ``path`` may also name: its ``unet/``
is read), else diffusers' DDPM defaults; a key set in the config wins. Other scheduler settings
(``timestep_spacing``, ``steps_offset``) are the pipelines' own (trailing spacing).

Read with ``local_files_only`` and safetensors only: no hub, no pickle. A checkpoint keeps the
UNet's weights with the model's (``decoders.image.net.*``) and its ``config.json`` and the
resolved ``scheduler_config.json`` in ``decoders/<name>/``, from which it is rebuilt, so a
trained checkpoint loads after the folder is gone.

Axes: b batch, l latent channels, y x latent height and width, n prompt tokens, d backbone
width, w the UNet's conditioning width.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from multimodal.backbone.hf import check_safetensors
from multimodal.data.images import image_height_width
from multimodal.errors import ConfigError
from multimodal.modalities.image.denoiser import BetaSchedule, LatentDenoiser, PredictionType
from multimodal.registry import decoders

logger = logging.getLogger(__name__)

UNET_CLASS = "UNet2DConditionModel"
CONFIG_FILE = "config.json"  # in the UNet's folder, and in decoders/<name>/ of a checkpoint
SCHEDULER_FILE = "scheduler_config.json"
WEIGHTS = "diffusion_pytorch_model"  # diffusers' weights file name, before .safetensors
# diffusers' DDPMScheduler defaults: the schedule of a folder that has no scheduler config
SCHEDULE_DEFAULTS: dict[str, Any] = {"num_train_timesteps": 1000, "beta_start": 1e-4,
                                     "beta_end": 0.02, "beta_schedule": "linear",
                                     "prediction_type": "epsilon"}
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction")


def find_unet_folder(path: str | Path) -> Path:
    """The folder of the UNet ``path`` names: ``path`` itself (``config.json`` + weights), or
    the ``unet/`` of a diffusers pipeline folder (``model_index.json``).

    Raises:
        ValueError: the path is missing, a file, or holds no diffusers model.
    """
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ValueError(f"denoiser folder not found: {folder}")
    if not folder.is_dir():
        raise ValueError(f"{folder} is a file; expected a diffusers model folder (config.json + "
                         f"{WEIGHTS}.safetensors, as save_pretrained writes)")
    if not (folder / CONFIG_FILE).is_file() and (folder / "model_index.json").is_file() \
            and (folder / "unet" / CONFIG_FILE).is_file():
        return folder / "unet"
    if not (folder / CONFIG_FILE).is_file():
        present = ", ".join(sorted(p.name for p in folder.iterdir())[:8]) or "nothing"
        hint = (f"; its UNet is probably {folder / 'unet'}"
                if (folder / "unet" / CONFIG_FILE).is_file() else "")
        raise ValueError(f"{folder} is not a diffusers model folder: it has no config.json "
                         f"(it holds {present}){hint}. Accepted: a UNet2DConditionModel "
                         f"folder (config.json + {WEIGHTS}.safetensors, as save_pretrained "
                         "writes) or a pipeline folder (model_index.json + unet/)")
    return folder


def read_unet_config(folder: Path) -> dict[str, Any]:
    """The ``config.json`` of a ``UNet2DConditionModel`` folder.

    Raises:
        ValueError: unreadable, or the config of another class (a VAE, an unconditional
            ``UNet2DModel``, a transformer), named.
    """
    # deferred: diffusers takes ~1.5 s to import
    from diffusers import UNet2DConditionModel

    try:
        config = dict(UNet2DConditionModel.load_config(folder, local_files_only=True))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {folder / CONFIG_FILE}: "
                         f"{str(exc).splitlines()[0]}") from None
    kind = config.get("_class_name")
    if kind != UNET_CLASS:
        what = kind or "model of unknown class"
        article = "an" if what[0].lower() in "aeiou" else "a"
        raise ValueError(f"{folder} holds {article} {what}, not a "
                         f"{UNET_CLASS} (a denoiser conditioned by cross-attention, as Stable "
                         "Diffusion's unet/ folder)")
    return config


def conditioning_width(config: dict[str, Any]) -> int:
    """The width of the states a UNet's cross-attention reads (its ``encoder_hidden_states``):
    ``encoder_hid_dim`` where the UNet projects them itself (``text_proj``), else
    ``cross_attention_dim``.

    Raises:
        ValueError: the UNet needs inputs the backbone does not give (class labels, SDXL's
            added text/time embeddings, image embeddings, GLIGEN's boxes), or has per-block
            cross-attention widths that differ.
    """
    needs = []
    if config.get("class_embed_type") is not None or config.get("num_class_embeds") is not None:
        needs.append(f"class labels (class_embed_type {config.get('class_embed_type')!r}, "
                     f"num_class_embeds {config.get('num_class_embeds')!r})")
    if config.get("addition_embed_type") is not None:
        needs.append(f"added conditions (addition_embed_type "
                     f"{config['addition_embed_type']!r}: SDXL's pooled text and time ids, or "
                     "image embeddings)")
    hid_type = config.get("encoder_hid_dim_type")
    if config.get("encoder_hid_dim") is not None and hid_type not in (None, "text_proj"):
        needs.append(f"image embeddings (encoder_hid_dim_type {hid_type!r})")
    if config.get("attention_type", "default") != "default":
        needs.append(f"{config['attention_type']!r} attention inputs (GLIGEN's boxes)")
    if needs:
        raise ValueError(f"the {UNET_CLASS} needs " + "; ".join(needs) + ", which the "
                         "backbone does not give; use a UNet conditioned by cross-attention "
                         "alone (Stable Diffusion 1.x/2.x style)")
    if config.get("encoder_hid_dim") is not None:
        return int(config["encoder_hid_dim"])
    width = config.get("cross_attention_dim")
    widths = set(width) if isinstance(width, (list, tuple)) else {width}
    if len(widths) != 1 or None in widths:
        raise ValueError(f"the {UNET_CLASS}'s cross_attention_dim {width!r} is not one width; "
                         "its blocks would read prompt states of different widths")
    return int(widths.pop())


def read_schedule(file: Path | None, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """The noise schedule and prediction type a diffusers ``scheduler_config.json`` gives (the
    keys of :data:`SCHEDULE_DEFAULTS` it has; ``{}`` without a file), with the values of
    ``given`` that are not ``None`` (the config's) in place of the file's.

    Raises:
        ValueError: unreadable, or a schedule the pipelines cannot rebuild that ``given`` does
            not override (explicit ``trained_betas``, another ``beta_schedule``, a
            ``prediction_type`` other than ``epsilon`` or ``v_prediction``), naming the file and
            the config key that overrides.
    """
    given = {k: v for k, v in (given or {}).items() if v is not None}
    if file is None or not file.is_file():
        return given
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the scheduler config {file}: {exc}") from None
    if not isinstance(config, dict):
        raise ValueError(f"the scheduler config {file} is not a JSON object")
    if config.get("trained_betas") is not None and "beta_schedule" not in given:
        raise ValueError(f"the scheduler config {file} gives explicit trained_betas, which the "
                         f"pipelines' schedulers are not built from; set beta_schedule "
                         f"({', '.join(BETA_SCHEDULES)}), beta_start and beta_end instead")
    schedule = {k: config[k] for k in SCHEDULE_DEFAULTS if config.get(k) is not None}
    schedule.update(given)
    if schedule.get("beta_schedule", "linear") not in BETA_SCHEDULES:
        raise ValueError(f"the scheduler config {file} has beta_schedule "
                         f"{schedule['beta_schedule']!r}; the pipelines take "
                         f"{', '.join(BETA_SCHEDULES)} (set beta_schedule to override)")
    if schedule.get("prediction_type", "epsilon") not in PREDICTION_TYPES:
        raise ValueError(f"the scheduler config {file} has prediction_type "
                         f"{schedule['prediction_type']!r}; the denoisers predict "
                         f"{' or '.join(PREDICTION_TYPES)} (set prediction_type to override)")
    return schedule


def fit_problems(config: dict[str, Any], vae: Any) -> list[str]:
    """Why a UNet ``config`` does not fit the image tokenizer ``vae`` (its ``latent_shape``
    (l, y, x) and ``downsample_factor``): channels and sample size, each naming both values."""
    latent_channels, y, x = (int(v) for v in vae.latent_shape)
    factor = int(getattr(vae, "downsample_factor", 1))
    problems = []
    in_channels, out_channels = config.get("in_channels"), config.get("out_channels")
    if in_channels != latent_channels or out_channels != latent_channels:
        problems.append(
            f"the {UNET_CLASS}'s in_channels {in_channels} and out_channels {out_channels} must "
            f"both be the image tokenizer's latent channels, {latent_channels} "
            "(tokenizers.image); a UNet for another VAE, an inpainting UNet (9 inputs) or one "
            "that also predicts its variance (twice the outputs) cannot serve")
    sample = config.get("sample_size")
    if sample is not None:
        height, width = image_height_width(list(sample) if isinstance(sample, (list, tuple))
                                           else int(sample), what="sample_size")
        if (height, width) != (y, x):
            size = height * factor if height == width else [height * factor, width * factor]
            problems.append(
                f"the {UNET_CLASS}'s sample_size {sample} ({height}x{width} latents, y x) is not "
                f"the image tokenizer's latent size {y}x{x} (tokenizers.image: images of "
                f"{y * factor}x{x * factor} pixels, {factor}x down-sampling); set "
                f"tokenizers.image.image_size to {size}, or use a UNet made for this size")
    return problems


@decoders.register("diffusers_denoiser")
class DiffusersDenoiser(LatentDenoiser):
    """A pretrained diffusers ``UNet2DConditionModel`` cross-attending to the backbone's states.

    Args:
        path: The UNet's folder (``config.json`` + ``diffusion_pytorch_model.safetensors``, as
            ``save_pretrained`` writes), or a diffusers pipeline folder holding it in ``unet/``.
            Read with ``local_files_only``: no hub access, never pickle weights.
        backbone: The shared backbone (set by the builder); its width ``d`` is projected to the
            UNet's conditioning width where they differ.
        tokenizers: The configured tokenizers (set by the builder); the UNet must fit
            ``tokenizers["image"]``'s latents (channels and size).
        files_dir: The folder of a checkpoint holding this decoder's saved ``config.json`` and
            ``scheduler_config.json`` (set by the builder when loading a checkpoint): the UNet
            is built from them, its weights come from the checkpoint, and ``path`` is not read.
        prediction_type: ``"epsilon"`` or ``"v_prediction"`` (default: the folder's scheduler
            config's, else ``"epsilon"``).
        num_train_timesteps, beta_start, beta_end, beta_schedule: The training noise schedule
            (default: the folder's scheduler config's, else diffusers' DDPM defaults: 1000
            steps, linear 1e-4 .. 0.02).
        cond_dropout: Share of training captions replaced by the empty caption, for
            classifier-free guidance (default 0.1).
        snr_gamma: Min-SNR loss weighting (as for ``latent_unet``; default null: plain mean
            squared error).

    Raises:
        ValueError: ``path`` is not a diffusers folder, holds only pickle weights, holds
            another model class than a ``UNet2DConditionModel``, or a UNet that needs inputs the
            backbone does not give; its channels or sample size do not fit the image tokenizer;
            the scheduler config gives a schedule the pipelines cannot rebuild.
    """

    injected_args = ("backbone", "tokenizers", "files_dir")

    def __init__(self, *, path: str, backbone: nn.Module, tokenizers: dict | None = None,
                 files_dir: str | Path | None = None,
                 prediction_type: PredictionType | None = None,
                 num_train_timesteps: int | None = None, beta_start: float | None = None,
                 beta_end: float | None = None, beta_schedule: BetaSchedule | None = None,
                 cond_dropout: float = 0.1, snr_gamma: float | None = None):
        # deferred: diffusers takes ~1.5 s to import
        from diffusers import UNet2DConditionModel

        super().__init__()
        saved = Path(files_dir) if files_dir is not None else None
        if saved is not None and (saved / CONFIG_FILE).is_file():
            folder, config = saved, read_unet_config(saved)
            schedule_file = saved / SCHEDULER_FILE
        else:
            folder = find_unet_folder(path)
            config = read_unet_config(folder)
            schedule_file = folder.parent / "scheduler" / SCHEDULER_FILE
        # every way it does not fit, at once: its inputs, then the VAE's latents
        problems, width = [], 0
        try:
            width = conditioning_width(config)
        except ValueError as exc:
            problems.append(str(exc))
        vae = (tokenizers or {}).get("image")
        has_vae = vae is not None and hasattr(vae, "latent_shape")
        problems += fit_problems(config, vae) if has_vae else []
        if problems:
            raise ConfigError(problems)
        if has_vae:
            _, y, x = (int(v) for v in vae.latent_shape)
            sample_size: Any = y if y == x else [y, x]
        elif config.get("sample_size") is not None:
            sample_size = config["sample_size"]
        else:
            raise ValueError(f"the {UNET_CLASS} in {folder} has no sample_size and there is no "
                             "image tokenizer to take the latent size from")
        if config.get("in_channels") != config.get("out_channels"):
            raise ValueError(f"the {UNET_CLASS}'s in_channels {config.get('in_channels')} and "
                             f"out_channels {config.get('out_channels')} differ; a denoiser "
                             "predicts the noise of the latents it reads")
        given = {"num_train_timesteps": num_train_timesteps, "beta_start": beta_start,
                 "beta_end": beta_end, "beta_schedule": beta_schedule,
                 "prediction_type": prediction_type}
        from_folder = read_schedule(schedule_file, given)
        schedule = {k: from_folder.get(k, default) for k, default in SCHEDULE_DEFAULTS.items()}
        self._set_schedule(in_channels=int(config["in_channels"]), sample_size=sample_size,
                           cond_dropout=cond_dropout, snr_gamma=snr_gamma, **schedule)
        self.size_multiple = 2 ** (len(config["block_out_channels"]) - 1)
        if self.sample_height % self.size_multiple or self.sample_width % self.size_multiple:
            raise ValueError(f"the latent size {self.sample_height}x{self.sample_width} must "
                             f"divide by the UNet's down-sampling, {self.size_multiple}")

        # a model planned on the meta device (training/plan.py) needs shapes, not weights
        planned = torch.empty(0).device.type == "meta"
        if folder is not saved:
            check_safetensors(folder, WEIGHTS)
        if folder is saved or planned:
            self.net = UNet2DConditionModel.from_config(config)
        else:
            try:
                self.net = UNet2DConditionModel.from_pretrained(
                    folder, local_files_only=True, use_safetensors=True,
                    torch_dtype=torch.float32)
            except (OSError, ValueError, RuntimeError) as exc:
                raise ValueError(f"cannot load the {UNET_CLASS} in {folder}: "
                                 f"{str(exc).splitlines()[0]}") from None
        self.source = str(folder)
        self.context_width, self.backbone_width = width, int(backbone.dim)
        # The UNet's cross-attention was trained on another text encoder's states: where the
        # widths differ, a learned linear map feeds it the backbone's (Stable Diffusion's
        # recipe for a new text encoder, e.g. SD 2's OpenCLIP, is a retrained UNet; a projection
        # lets the pretrained one be kept, frozen or fine-tuned).
        self.context_proj = (nn.Linear(self.backbone_width, width)
                             if width != self.backbone_width else None)
        if not planned:
            self._log_conditioning(fresh=folder is not saved)

    def _log_conditioning(self, *, fresh: bool) -> None:
        """One log line: whether the UNet reads the backbone's states directly or through the
        projection (a warning when the projection is new: it needs training)."""
        if self.context_proj is None:
            logger.info("decoders: the %s of %s reads the backbone's states directly (width %d)",
                        UNET_CLASS, self.source, self.context_width)
            return
        (logger.warning if fresh else logger.info)(
            "decoders: the %s of %s reads prompt states of width %d, the backbone gives %d: a "
            "learned linear projection (context_proj) maps them%s", UNET_CLASS, self.source,
            self.context_width, self.backbone_width,
            "; it starts untrained, so train it before sampling" if fresh else "")

    def check_latents(self, latents: torch.Tensor) -> None:
        """Raise a clear error when the VAE's training latents do not fit the pretrained UNet.

        Raises:
            ConfigError: the shapes differ (names both and the settings to change).
        """
        if tuple(latents.shape[1:]) != self.latent_shape:
            raise ConfigError(
                f"the image tokenizer makes latents of shape {tuple(latents.shape[1:])} but the "
                f"pretrained {UNET_CLASS} ({self.source}) reads {self.latent_shape} (l, y, x); "
                "use a VAE with its latent channels and set tokenizers.image.image_size to its "
                "sample_size times the VAE's down-sampling factor")

    def forward(self, x_t: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Predict ``eps`` or ``v`` (see ``prediction_type``): the UNet's own forward on the
        backbone's states (projected to its width where they differ).

        Args:
            x_t: Noisy latents (b, l, y, x).
            timesteps: Training timesteps (b,) in [0, num_train_timesteps), int or float.
            context: Backbone hidden states of the prompt (b, n, d).
            context_mask: (b, n) bool, ``True`` for real tokens, ``False`` for padding.

        Returns:
            (b, l, y, x) prediction.
        """
        if self.context_proj is not None:
            context = self.context_proj(context)  # (b, n, w)
        return self.net(x_t, timesteps, encoder_hidden_states=context,
                        encoder_attention_mask=context_mask).sample  # (b, l, y, x)

    def checkpoint_files(self) -> dict[str, bytes]:
        """Files a checkpoint stores in ``decoders/<name>/`` beside the weights to rebuild this
        decoder without ``path``: the UNet's ``config.json`` and the resolved noise schedule as
        a diffusers ``scheduler_config.json``."""
        schedule = {"_class_name": "DDPMScheduler", **self.noise_schedule}
        return {CONFIG_FILE: self.net.to_json_string().encode("utf-8"),
                SCHEDULER_FILE: json.dumps(schedule, indent=1).encode("utf-8")}

    def extra_repr(self) -> str:
        return (f"source={self.source}, latents={self.latent_shape}, "
                f"context {self.backbone_width} -> {self.context_width}, "
                f"prediction_type={self.prediction_type}")
