"""Speech: an espeak-ng phoneme front end, log-mel features with WaveNet-style vocoders (the
audio tokenizer), a FastSpeech 2 style acoustic decoder on the shared backbone, and the
training objective."""

from multimodal.modalities.audio.acoustic import MelDecoder, monotonic_alignment_search
from multimodal.modalities.audio.features import LogMel
from multimodal.modalities.audio.modality import AudioModality, SpeechFrames
from multimodal.modalities.audio.phonemes import PhonemeTokenizer, phonemize
from multimodal.modalities.audio.tokenizer import LogMelTokenizer

__all__ = ["AudioModality", "LogMel", "LogMelTokenizer", "MelDecoder", "PhonemeTokenizer",
           "SpeechFrames", "monotonic_alignment_search", "phonemize"]
