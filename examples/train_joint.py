"""Train the toy joint model (one backbone, every decoder: text, image, caption, video, audio)
from a config in Python, then generate one output of each kind from its single checkpoint.

    .venv/bin/python examples/train_joint.py                  # about 4 minutes on 2 busy cores
    .venv/bin/python examples/train_joint.py --steps 1000 backbone.depth=4 --out-dir runs/my_joint

Needs the Debian packages fortunes, dataset-fashion-mnist and espeak-ng. Writes the run to
runs/example_joint and out/example_joint/{text.txt,image.png,audio.wav,video.gif,video.mp4}.
"""

import argparse
from pathlib import Path

from PIL import Image

import multimodal
from multimodal.modalities.video import files
from multimodal.modalities.audio.files import wav_bytes
from multimodal.training.trainer import train

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. backbone.depth=4")
parser.add_argument("--config", default="configs/tiny.yaml")
parser.add_argument("--steps", type=int, default=300)
parser.add_argument("--out-dir", default="runs/example_joint", help="run directory")
parser.add_argument("--out", default="out/example_joint", help="where the outputs go")
parser.add_argument("--inference-steps", type=int, default=25, help="diffusion steps")
args = parser.parse_args()

# One optimizer step trains every decoder on its own batch, through the shared backbone.
# Dotted overrides as on the command line; validate and checkpoint only at the end.
config = multimodal.load_config(args.config, [f"train.max_steps={args.steps}",
                                              "train.eval_every=0", "train.checkpoint_every=0",
                                              *args.overrides])
result = train(config, out_dir=args.out_dir)
print(f"step {result['step']} -> {result['checkpoint']}")
for name in config["decoders"]:
    print(f"  {name:>7}: train loss {result[f'loss_{name}']:.3f}, "
          f"validation loss {result[f'val_{name}_loss']:.3f}")

# Every task loads its pipeline from the same checkpoint.
run, out = result["checkpoint"], Path(args.out)
out.mkdir(parents=True, exist_ok=True)
steps = args.inference_steps

text = multimodal.load_pipeline("text-generation", checkpoint=run)("The", max_new_tokens=40,
                                                                   seed=0).texts[0]
(out / "text.txt").write_text("The" + text + "\n")
print(f"text-generation -> {out / 'text.txt'}: {'The' + text!r}")

image = multimodal.load_pipeline("text-to-image", checkpoint=run)(
    "a sneaker", seed=0, num_inference_steps=steps, progress=False).images[0]
Image.fromarray(image).save(out / "image.png")
caption = multimodal.load_pipeline("image-to-text", checkpoint=run)(image).texts[0]
print(f"text-to-image -> {out / 'image.png'}: 'a sneaker' (captioned back: {caption!r})")

speech = multimodal.load_pipeline("text-to-audio", checkpoint=run)("seven", seed=0,
                                                                   progress=False)
(out / "audio.wav").write_bytes(wav_bytes(speech.audios[0], speech.sample_rate))
print(f"text-to-audio -> {out / 'audio.wav'}: 'seven' "
      f"({len(speech.audios[0]) / speech.sample_rate:.2f} s)")

video = multimodal.load_pipeline("text-to-video", checkpoint=run)(
    "a bag moving up", seed=0, num_inference_steps=steps, progress=False)
clip = video.videos[0]  # (t, h, w) uint8
(out / "video.gif").write_bytes(files.gif_bytes(clip, video.fps))
written = [out / "video.gif"]
if files.ffmpeg_available():
    (out / "video.mp4").write_bytes(files.mp4_bytes(clip, video.fps))
    written.append(out / "video.mp4")
print(f"text-to-video -> {', '.join(map(str, written))}: 'a bag moving up' "
      f"({len(clip)} frames at {video.fps:g} fps)")
