"""Hugging Face formats out: a checkpoint as a transformers model folder, a diffusers VAE
folder and a PEFT adapter folder (:mod:`multimodal.interop.hf_export`).

(Hugging Face formats in are components beside their kinds: the ``hf_causal_lm`` backbone in
``backbone/hf.py``, the ``hf_tokenizer`` in ``modalities/text/``, the ``diffusers_vae`` and
the ``diffusers_denoiser`` in ``modalities/image/``.)
"""

from multimodal.interop.hf_export import ExportReport, export_hf

__all__ = ["ExportReport", "export_hf"]
