"""Speak a text with the embedded default model (or a checkpoint of your own), once per
vocoder, and write the WAV files.

    .venv/bin/python examples/text_to_audio.py "seven"
    .venv/bin/python examples/text_to_audio.py "Hello there." --checkpoint runs/text_to_audio_speech
"""

import argparse
import time
from pathlib import Path

import multimodal
from multimodal.modalities.audio.files import wav_bytes

parser = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("prompt", nargs="?", default="seven")
parser.add_argument("--checkpoint", default=None, help="checkpoint or run directory")
parser.add_argument("--out", default="out/example_audio")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

pipe = multimodal.load_pipeline("text-to-audio", checkpoint=args.checkpoint)
print("voices:", ", ".join(pipe.voices))
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
for vocoder in pipe.audio.available_vocoders:  # parallel, autoregressive, griffin-lim
    start = time.perf_counter()
    result = pipe(args.prompt, vocoder=vocoder, seed=args.seed, progress=False)
    seconds = len(result.audios[0]) / result.sample_rate
    path = out / f"{vocoder}.wav"
    path.write_bytes(wav_bytes(result.audios[0], result.sample_rate))
    print(f"{vocoder:>14}: {seconds:.2f} s of audio in {time.perf_counter() - start:.2f} s "
          f"-> {path}")
print("phonemes:", result.phonemes)
