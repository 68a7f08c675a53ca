"""Images: a VAE tokenizer (latents), a ViT-style latent patch embedding, latent diffusion
denoisers conditioned on the shared backbone (UNet and DiT, or a pretrained diffusers UNet),
diffusers schedulers by name, and the training objective."""

from multimodal.modalities.image.caption import CaptionModality, LatentCaptioner
from multimodal.modalities.image.diffusers_denoiser import DiffusersDenoiser
from multimodal.modalities.image.diffusers_vae import DiffusersVAETokenizer
from multimodal.modalities.image.denoiser import LatentDenoiser, LatentDiT, LatentUNet
from multimodal.modalities.image.modality import ImageModality, LatentCaptions, encode_captions
from multimodal.modalities.image.patches import LatentPatchEmbed, patchify, unpatchify
from multimodal.modalities.image.schedulers import make_scheduler
from multimodal.modalities.image.vae import ImageVAETokenizer

__all__ = ["CaptionModality", "DiffusersDenoiser", "DiffusersVAETokenizer", "ImageModality", "LatentCaptioner", "ImageVAETokenizer", "LatentCaptions", "LatentDenoiser",
           "LatentDiT", "LatentPatchEmbed", "LatentUNet", "encode_captions", "make_scheduler",
           "patchify", "unpatchify"]
