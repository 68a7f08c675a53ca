"""Caption images with the shared backbone: draw one item per class, then caption the drawings.

    .venv/bin/python examples/image_to_text.py
    .venv/bin/python examples/image_to_text.py path/to.png another.png   # your own images
    .venv/bin/python examples/image_to_text.py --checkpoint runs/image_to_text_fashion

Without image paths it first draws "a sneaker", "a bag", ... with text-to-image from the same
checkpoint, so the round trip prompt -> image -> caption runs through one backbone.
"""

import argparse

import multimodal

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("images", nargs="*", help="image files to caption (default: draw some)")
parser.add_argument("--checkpoint", default=None, help="checkpoint or run directory (default: the embedded joint model)")
parser.add_argument("--steps", type=int, default=25, help="diffusion steps when drawing")
args = parser.parse_args()

captioner = multimodal.load_pipeline("image-to-text", checkpoint=args.checkpoint)
if args.images:
    for path, caption in zip(args.images, captioner(args.images).texts):
        print(f"{path}: {caption}")
else:
    painter = multimodal.load_pipeline("text-to-image", checkpoint=args.checkpoint)
    prompts = ["a t-shirt", "a pair of trousers", "a sneaker", "a bag", "an ankle boot"]
    images = [painter(p, seed=0, num_inference_steps=args.steps, progress=False).images[0]
              for p in prompts]
    for prompt, caption in zip(prompts, captioner(images).texts):  # uint8 arrays in, text out
        print(f"drawn from {prompt!r:22} -> captioned {caption!r}")
