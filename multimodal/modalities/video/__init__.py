"""Video: a per-frame VAE tokenizer (latent videos), a spatio-temporal DiT denoiser
conditioned on the shared backbone and initialisable from the image DiT, the training
objective, and MP4/GIF writers."""

from multimodal.modalities.video.denoiser import LatentVideoDiT, TemporalAttention
from multimodal.modalities.video.modality import VideoModality
from multimodal.modalities.video.vae import VideoVAETokenizer, decode_video, encode_video

__all__ = ["LatentVideoDiT", "TemporalAttention", "VideoModality", "VideoVAETokenizer",
           "decode_video", "encode_video"]
