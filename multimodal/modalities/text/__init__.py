"""Text: byte-level BPE tokenizer, LM head tied to the backbone embeddings, next-token loss."""

from multimodal.modalities.text.head import LMHead
from multimodal.modalities.text.hf_tokenizer import HFTokenizer
from multimodal.modalities.text.modality import TextModality, TokenStream
from multimodal.modalities.text.tokenizer import ByteBPETokenizer

__all__ = ["ByteBPETokenizer", "HFTokenizer", "LMHead", "TextModality", "TokenStream"]
