"""Generate garment images from prompts, then edit one (image-to-image and inpainting).

    .venv/bin/python examples/text_to_image.py "a sneaker"
    .venv/bin/python examples/text_to_image.py "a dress" --checkpoint runs/text_to_image_fashion

Writes out/example_image/{samples,edited,inpainted}.png.
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

import multimodal

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("prompt", nargs="?", default="a sneaker")
parser.add_argument("--checkpoint", default=None, help="checkpoint or run directory")
parser.add_argument("--out", default="out/example_image")
parser.add_argument("--steps", type=int, default=25)
args = parser.parse_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)

# Four samples of one prompt, with classifier-free guidance and DPM-Solver++.
pipe = multimodal.load_pipeline("text-to-image", checkpoint=args.checkpoint)
result = pipe(args.prompt, num_samples=4, seed=0, num_inference_steps=args.steps,
              guidance_scale=4.0, progress=False)
Image.fromarray(np.concatenate(result.images, axis=1)).save(out / "samples.png")
print(f"{args.prompt!r}: seed {result.seed} -> {out / 'samples.png'}")

# SDEdit: noise the first sample 70% of the way and denoise toward another prompt.
edit = multimodal.load_pipeline("image-to-image", checkpoint=args.checkpoint)
edited = edit("an ankle boot", image=result.images[0], strength=0.7, seed=0,
              num_inference_steps=args.steps, progress=False)
Image.fromarray(edited.images[0]).save(out / "edited.png")
print(f"image-to-image -> {out / 'edited.png'}")

# Inpainting: regenerate the lower half (white in the mask), keep the upper half exactly.
mask = np.zeros_like(result.images[0])
mask[mask.shape[0] // 2 :] = 255
inpaint = multimodal.load_pipeline("inpainting", checkpoint=args.checkpoint)
filled = inpaint(args.prompt, image=result.images[0], mask=mask, seed=1,
                 num_inference_steps=args.steps, progress=False)
Image.fromarray(filled.images[0]).save(out / "inpainted.png")
print(f"inpainting -> {out / 'inpainted.png'}")
