"""Train a small text model from a config in Python, then sample from it.

    .venv/bin/python examples/train_text.py            # a 1-minute run of the tiny config
"""

import multimodal
from multimodal.training.trainer import train

config = multimodal.load_config("configs/text_tiny.yaml", ["train.max_steps=60"])
result = train(config, out_dir="runs/example_text")
print(f"step {result['step']}: validation {result['val_text_bpb']:.3f} bits per byte")

pipe = multimodal.load_pipeline("text-generation", checkpoint=result["checkpoint"])
print(pipe("The", max_new_tokens=40, seed=0).texts[0])
