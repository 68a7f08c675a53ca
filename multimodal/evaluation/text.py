"""Text-generation quality: validation bits per byte, and whether samples read as English.

Figures, each next to the same figure for real validation text of the corpus:

* ``dictionary_word_rate``: share of generated words (letters and apostrophes, lower-cased)
  found in a dictionary: ``/usr/share/dict/words`` (Debian ``wamerican``) when installed,
  else the words of the corpus' training split (named in ``dictionary``).
* ``repeated_4gram_rate``: share of word 4-grams in a sample that already occurred earlier in
  the same sample; text that loops on itself scores high.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from multimodal.builders import build_datasets
from multimodal.modalities.text.modality import TextModality
from multimodal.pipelines import load_pipeline

WORD_RE = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
DICTIONARY = Path("/usr/share/dict/words")
PROMPTS = ("", "The", "A man", "Life is", "I think", "When the", "Love", "The computer")


def words(text: str) -> list[str]:
    return [w.lower() for w in WORD_RE.findall(text)]


def load_dictionary(fallback_texts) -> tuple[set[str], str]:
    if DICTIONARY.is_file():
        entries = DICTIONARY.read_text(encoding="utf-8", errors="ignore").split()
        return {w.lower() for w in entries}, str(DICTIONARY)
    vocab = {w for t in fallback_texts for w in words(t)}
    return vocab, "words of the training split (install wamerican for a real dictionary)"


def dictionary_word_rate(texts, dictionary: set[str]) -> float:
    found = [w in dictionary for t in texts for w in words(t)]
    return sum(found) / len(found) if found else 0.0


def repeated_4gram_rate(texts) -> float:
    repeated = total = 0
    for t in texts:
        w = words(t)
        seen = set()
        for i in range(len(w) - 3):
            gram = tuple(w[i : i + 4])
            repeated += gram in seen
            seen.add(gram)
            total += 1
    return repeated / total if total else 0.0


def evaluate_text_generation(*, checkpoint=None, num_samples: int = 32, seed: int = 0,
                             max_new_tokens: int = 80, eval_batches: int = 50,
                             device: str = "cpu") -> dict:
    """Evaluate a text checkpoint (default: the embedded one); see the module docstring.

    Args:
        checkpoint: Checkpoint or run directory (default: the embedded one).
        num_samples: Continuations generated and judged.
        seed: Seed of the sampling generator.
        max_new_tokens: Tokens per continuation.
        eval_batches: Validation batches of the loss and bits per byte.
        device: Where the pipeline runs (``"cpu"``, ``"cuda"``, ``"mps"``).

    Raises:
        CheckpointError: the checkpoint is missing or has no text decoder.
        InputError: an unknown or unavailable device.
    """
    pipe = load_pipeline("text-generation", checkpoint, device=device)
    config = {"data": {"text": {"type": "fortunes"}}}
    train_docs = build_datasets(config, "train")["text"]
    val_docs = build_datasets(config, "val")["text"]
    modality = TextModality()
    seq_len = min(128, pipe.backbone.max_seq_len - 1)
    stream = modality.prepare(val_docs, {"text": pipe.tokenizer}, seq_len=seq_len)
    val = modality.evaluate(pipe.backbone, pipe.lm_head, stream, batch_size=16,
                            max_batches=eval_batches)

    generator = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(num_samples):
        out = pipe(PROMPTS[i % len(PROMPTS)], max_new_tokens=max_new_tokens,
                   generator=generator)
        samples.append(out.texts[0])
    dictionary, source = load_dictionary(train_docs)
    reference = list(val_docs)[: max(num_samples, 64)]
    return {
        "task": "text-generation",
        "checkpoint_id": pipe.checkpoint_id,
        "val_loss": val.get("loss"),
        "val_bpb": val.get("bpb"),
        "dictionary": source,
        "dictionary_word_rate": dictionary_word_rate(samples, dictionary),
        "dictionary_word_rate_real_text": dictionary_word_rate(reference, dictionary),
        "repeated_4gram_rate": repeated_4gram_rate(samples),
        "repeated_4gram_rate_real_text": repeated_4gram_rate(reference),
        "num_samples": num_samples,
        "example": samples[1] if len(samples) > 1 else samples[0],
    }
