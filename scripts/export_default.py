r"""Make a trained checkpoint an embedded default (``multimodal/assets/<name>``).

    .venv/bin/python scripts/export_default.py runs/text_fortunes text-generation
    .venv/bin/python scripts/export_default.py runs/joint_emoji_captions joint \
        --take runs/joint_emoji_image:decoders.image

``--take CHECKPOINT:decoders.NAME`` joins a decoder trained in a parallel stage on the same
frozen backbone (refused when the backbones differ in any weight).

Weights are stored in fp16 (cast back to fp32 on load) without optimizer state. Replace the
default only with a checkpoint whose judged quality is better (see `multimodal evaluate`), so
the repository history stays small.
"""

import argparse
import sys
from pathlib import Path

import torch

from multimodal.pipelines import ASSETS
from multimodal.checkpoint import export_checkpoint
from multimodal.errors import MultimodalError

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("checkpoint", help="checkpoint or run directory")
parser.add_argument("name", help="asset name, e.g. text-generation or text-to-image")
parser.add_argument("--fp32", action="store_true", help="keep fp32 weights")
parser.add_argument("--take", action="append", default=[], metavar="CHECKPOINT:decoders.NAME",
                    help="join a decoder of another stage that froze the same backbone")
args = parser.parse_args()
if not args.name or args.name != Path(args.name).name or args.name in (".", ".."):
    parser.error(f"name {args.name!r}: expected a plain folder name under {ASSETS}, "
                 "e.g. joint")
takes = []
for take in args.take:
    source, sep, part = take.rpartition(":")
    if not sep or not source or not part.startswith("decoders."):
        parser.error(f"--take {take!r}: expected CHECKPOINT:decoders.NAME")
    takes.append((source, part))
try:
    path = export_checkpoint(args.checkpoint, ASSETS / args.name,
                             dtype=None if args.fp32 else torch.float16, takes=takes)
except MultimodalError as exc:
    sys.exit(f"error: {exc}")
size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
print(f"exported {args.checkpoint} -> {path} ({size / 1e6:.1f} MB)")
