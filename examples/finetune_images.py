"""Fine-tune a text-to-image checkpoint on a small folder of your own images with captions
(low-rank adapters by default, or the backbone frozen), then draw one of the captions.

    .venv/bin/python examples/finetune_images.py            # about 9 minutes on 2 CPU cores
    .venv/bin/python examples/finetune_images.py --folder my_images --freeze-backbone
    .venv/bin/python examples/finetune_images.py --checkpoint runs/text_to_image_fashion --steps 500

A folder lists its images in images.jsonl, one {"image": "img/000.png", "caption": "..."} a
line (or images.csv with image and caption columns; paths relative to the folder). Its images
may have any size and mode (grey, RGB, RGBA, palette): they are converted to the checkpoint's
format, transparency composited on white (grey 32x32 for a Fashion-MNIST model, RGB 64x64 for
the emoji one). Without --folder one is made first: 32 Fashion-MNIST test images with captions
like "a photo of my sneaker" (for a colour checkpoint each garment tinted on a transparent
background, RGBA: "a photo of my red sneaker"). Writes into runs/example_finetune: the run,
the config it trained (finetune.yaml) and grid.png (one caption, same seeds: the top row
before fine-tuning, the bottom row after).
"""

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

import multimodal
from multimodal.config import dump_yaml
from multimodal.data import read_media_list
from multimodal.data.images import FASHION_MNIST_DIR, FASHION_MNIST_FILES, read_idx
from multimodal.pipelines import default_checkpoint
from multimodal.modalities.image.files import image_grid
from multimodal.checkpoint import find_checkpoint, read_config
from multimodal.training.trainer import train

NAMES = ("t-shirt", "trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
         "ankle boot")

# (name, RGB) of the tints of the colour example folder
TINTS = (("red", (220, 30, 30)), ("blue", (30, 60, 220)), ("green", (30, 160, 50)),
         ("yellow", (240, 200, 20)), ("purple", (140, 40, 180)), ("orange", (250, 130, 20)))

# measured: the default 300 steps of 16 images took about 9 minutes on 2 CPU cores for the grey
# 32x32 model, and 4.3 minutes (0.85 s a step, 1 thread, two other runs on the cores) for the
# 64x64 colour emoji model (configs/text_to_image_emoji.yaml) on 2026-12-03
IMAGES_PER_MINUTE = 530
COLOUR_IMAGES_PER_MINUTE = 1100

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--checkpoint", default=None,
                    help="checkpoint or run directory (default: the embedded joint model)")
parser.add_argument("--folder", default=None, help="folder with images.jsonl or images.csv "
                    "(default: make an example one)")
parser.add_argument("--num-images", type=int, default=32, help="images in the example folder")
parser.add_argument("--steps", type=int, default=300)
parser.add_argument("--batch-size", type=int, default=16)
parser.add_argument("--lr", type=float, default=1e-3)
parser.add_argument("--freeze-backbone", action="store_true",
                    help="train the whole image decoder, backbone fixed (default: LoRA adapters)")
parser.add_argument("--lora-rank", type=int, default=8)
parser.add_argument("--prompt", default=None, help="caption to draw (default: the first listed)")
parser.add_argument("--inference-steps", type=int, default=25, help="diffusion steps")
parser.add_argument("--out-dir", default="runs/example_finetune")
args = parser.parse_args()
out = Path(args.out_dir)


def make_example_folder(folder: Path, count: int, colour: bool) -> Path:
    """Fashion-MNIST test images saved as PNG, with made-up captions, listed in images.jsonl:
    28x28 grayscale, or (``colour``) RGBA, the garment tinted and the background transparent."""
    pixels, labels = (read_idx(Path(FASHION_MNIST_DIR) / f) for f in FASHION_MNIST_FILES["val"])
    (folder / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        name = NAMES[labels[i]]
        if colour:  # the garment's brightness becomes its opacity
            tint, rgb = TINTS[i % len(TINTS)]
            rgba = np.empty((28, 28, 4), np.uint8)
            rgba[..., :3], rgba[..., 3] = rgb, pixels[i]
            Image.fromarray(rgba).save(folder / "img" / f"{i:03d}.png")
            name = f"{tint} {name}"
        else:
            Image.fromarray(pixels[i]).save(folder / "img" / f"{i:03d}.png")  # 28x28 grayscale
        lines.append(json.dumps({"image": f"img/{i:03d}.png", "caption": f"a photo of my {name}"}))
    (folder / "images.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "images.jsonl"


# (a) the checkpoint, and the images: a folder's list file, or an example folder made now
checkpoint = find_checkpoint(args.checkpoint) if args.checkpoint else \
    default_checkpoint("text-to-image")
base = read_config(checkpoint)
vae = base["tokenizers"]["image"]
channels, size = vae.get("in_channels", 1), vae.get("image_size", 32)
if args.folder is None:
    images = make_example_folder(out / "my_images", args.num_images, colour=channels == 3)
    print(f"made {args.num_images} example images -> {images}")
else:
    found = [p for p in (Path(args.folder) / n for n in ("images.jsonl", "images.csv"))
             if p.is_file()]
    if not found:
        parser.error(f"--folder {args.folder} holds no images.jsonl or images.csv")
    images = found[0]

# (b) the fine-tuning config: the checkpoint's own text and image parts, initialised from it;
# the folder's images are read in the checkpoint's format (grey or RGB, its size)
config = {
    "task": "text-to-image",
    "seed": 0,
    "init_from": str(checkpoint),  # weights and tokenizers
    "tokenizers": {name: base["tokenizers"][name] for name in ("text", "image")},
    "backbone": base["backbone"],
    "decoders": {"image": base["decoders"]["image"]},
    "data": {"image": {"type": "image_folder", "path": str(images), "channels": channels,
                       "image_size": size}},
    "train": {"max_steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
              "seq_len": base.get("train", {}).get("seq_len", 32),
              "warmup_steps": min(20, args.steps), "eval_every": 0, "eval_batches": 4,
              "checkpoint_every": 0, "keep_checkpoints": 1, "log_every": 10},
}
if base.get("train", {}).get("num_threads"):  # measured for that model (see its config)
    config["train"]["num_threads"] = base["train"]["num_threads"]
if args.freeze_backbone:
    config["train"]["freeze"] = ["backbone"]
else:
    config["train"]["lora"] = {"rank": args.lora_rank}
out.mkdir(parents=True, exist_ok=True)
config_file = out / "finetune.yaml"
config_file.write_text(dump_yaml(config))
print(f"config -> {config_file}; the same from the command line:\n"
      f"  .venv/bin/multimodal train {config_file} init_from={checkpoint} --out-dir {out}")

# (c) train (validated as `multimodal train` does), then draw one caption before and after
speed = COLOUR_IMAGES_PER_MINUTE if channels == 3 else IMAGES_PER_MINUTE
minutes = args.steps * args.batch_size / speed
print(f"training {args.steps} steps of {args.batch_size} images (about {minutes:.0f} minutes on "
      "2 CPU cores for the shipped model sizes; the bar shows the time left)")
result = train(multimodal.load_config(config_file), out_dir=out)
print(f"step {result['step']}: image loss {result['loss_image']:.4f} -> {result['checkpoint']}")
prompt = args.prompt or read_media_list(images, "image")[0][1]["caption"]
rows = []
for source in (checkpoint, result["checkpoint"]):
    pipe = multimodal.load_pipeline("text-to-image", checkpoint=source)
    rows += pipe(prompt, num_samples=8, seed=0, num_inference_steps=args.inference_steps,
                 progress=False).images
Image.fromarray(image_grid(rows, columns=8)).save(out / "grid.png")
print(f"{prompt!r}: top row before, bottom row after fine-tuning -> {out / 'grid.png'}")
