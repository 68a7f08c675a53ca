"""Generate text with the embedded default model (or a checkpoint of your own).

    .venv/bin/python examples/text_generation.py "The secret of life is"
    .venv/bin/python examples/text_generation.py "Love is" --checkpoint runs/text_fortunes
"""

import argparse

import multimodal
from multimodal.pipelines.text_generation import TextStreamer

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("prompt", nargs="?", default="The secret of life is")
parser.add_argument("--checkpoint", default=None, help="checkpoint or run directory")
parser.add_argument("--max-new-tokens", type=int, default=80)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()

pipe = multimodal.load_pipeline("text-generation", checkpoint=args.checkpoint)

# Streamed: tokens appear as they are sampled (top-p 0.95, temperature 0.8 by default).
print(args.prompt, end="", flush=True)
pipe(args.prompt, max_new_tokens=args.max_new_tokens, seed=args.seed,
     streamer=TextStreamer(pipe.tokenizer))
print()

# Several samples at once, greedy and sampled.
greedy = pipe(args.prompt, max_new_tokens=30, do_sample=False)
print("greedy :", args.prompt + greedy.texts[0].replace("\n", " "))
for i, text in enumerate(pipe(args.prompt, max_new_tokens=30, num_samples=3, seed=args.seed).texts):
    print(f"sample {i}:", args.prompt + text.replace("\n", " "))
