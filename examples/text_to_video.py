"""Generate short clips of a moving garment, write them as MP4 and GIF, and measure which way
the item moves (the centre-of-mass trajectory of ``multimodal evaluate text-to-video``).

    .venv/bin/python examples/text_to_video.py "a sneaker moving left" \
        --checkpoint runs/text_to_video_moving

Writes out/example_video/{000,001}.{mp4,gif} and strip.png (the first clip's frames).
"""

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import multimodal
from multimodal.evaluation.video import centre_of_mass, motion_direction
from multimodal.modalities.video import files

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("prompt", nargs="?", default="a sneaker moving left")
parser.add_argument("--checkpoint", default=None, help="checkpoint or run directory")
parser.add_argument("--out", default="out/example_video")
parser.add_argument("--steps", type=int, default=25)
parser.add_argument("--fps", type=float, default=10.0)
args = parser.parse_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)

# Two clips of one prompt, classifier-free guidance and DPM-Solver++, the model's clip length.
pipe = multimodal.load_pipeline("text-to-video", checkpoint=args.checkpoint)
result = pipe(args.prompt, num_samples=2, seed=0, num_inference_steps=args.steps,
              guidance_scale=4.0, fps=args.fps, progress=False)
for i, clip in enumerate(result.videos):  # (t, h, w) uint8
    if files.ffmpeg_available():
        (out / f"{i:03d}.mp4").write_bytes(files.mp4_bytes(clip, result.fps))
    (out / f"{i:03d}.gif").write_bytes(files.gif_bytes(clip, result.fps))
Image.fromarray(files.frame_strip(result.videos[0])).save(out / "strip.png")

clips = torch.from_numpy(np.stack(result.videos)).float() / 255.0  # (s, t, h, w) in [0, 1]
for i, direction in enumerate(motion_direction(centre_of_mass(clips))):
    print(f"clip {i}: {result.num_frames} frames at {result.fps:g} fps, moves "
          f"{direction or 'too little to tell'}")
print(f"wrote {out}")
