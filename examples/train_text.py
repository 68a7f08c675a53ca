"""Train a small text model from a config in Python, then sample from it.

    .venv/bin/python examples/train_text.py                  # ~40 s on 2 busy cores, tiny config
    .venv/bin/python examples/train_text.py --steps 2000 --config configs/text_fortunes.yaml
"""

import argparse

import multimodal
from multimodal.training.trainer import train

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--config", default="configs/text_tiny.yaml")
parser.add_argument("--steps", type=int, default=200)
parser.add_argument("--out-dir", default="runs/example_text")
args = parser.parse_args()

# Dotted overrides, exactly as on the command line.
config = multimodal.load_config(args.config, [f"train.max_steps={args.steps}"])
result = train(config, out_dir=args.out_dir)
print(f"step {result['step']}: validation {result['val_text_bpb']:.3f} bits per byte")

pipe = multimodal.load_pipeline("text-generation", checkpoint=result["checkpoint"])
print(pipe("The", max_new_tokens=40, seed=0).texts[0])
