"""Image datasets: Fashion-MNIST (Xiao et al. 2017, https://arxiv.org/abs/1708.07747) from the
Debian package ``dataset-fashion-mnist``, and a user's own images with captions.

Every item is a dict::

    {"image": float tensor (c, h, w) in [-1, 1], "caption": str, "label": int (-1 if none)}

Fashion-MNIST's 28x28 grayscale pictures are padded with black (-1) to 32x32, so a VAE with two
down-sampling stages gives 8x8 latents. Captions are made from the class names in varied
natural phrasings and synonyms ("ankle boot", "a boot", "a photo of an ankle boot", "a pair of
trousers", "a handbag"); the phrasing of item ``i`` is a pure function of ``(caption_seed,
split, i)``, so it is deterministic and needs no storage.

Besides ``__getitem__``, both datasets offer bulk access used by the VAE fit and the image
modality (decoding 60,000 dicts one by one would be slow): ``get_images(indices)`` -> (k, c, h,
w) float tensor, ``labels`` (list of int) and ``captions`` (list of str).

Axes: k items, c channels, h w height width.
"""

from __future__ import annotations

import gzip
import random
import threading
import zlib
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from multimodal.data import check_split, read_media_split
from multimodal.errors import DataError
from multimodal.registry import datasets

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASS_NAMES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
               "sneaker", "bag", "ankle boot")

# Per class: (singular, plural) noun phrases; the first is the canonical name. A singular of
# ``None`` is a plural-only noun ("trousers"), used as "a pair of ...".
SYNONYMS: tuple[tuple[tuple[str | None, str], ...], ...] = (
    (("t-shirt", "t-shirts"), ("tee", "tees"), ("tee shirt", "tee shirts"), ("top", "tops"),
     ("tshirt", "tshirts"), ("t shirt", "t shirts"), ("short-sleeved top", "short-sleeved tops")),
    ((None, "trousers"), (None, "pants"), (None, "jeans"), (None, "slacks"), ("trouser", "trousers"),
     (None, "leggings")),
    (("pullover", "pullovers"), ("sweater", "sweaters"), ("jumper", "jumpers"),
     ("sweatshirt", "sweatshirts"), ("knit sweater", "knit sweaters"), ("hoodie", "hoodies")),
    (("dress", "dresses"), ("gown", "gowns"), ("frock", "frocks"), ("sundress", "sundresses"),
     ("summer dress", "summer dresses")),
    (("coat", "coats"), ("jacket", "jackets"), ("overcoat", "overcoats"), ("parka", "parkas"),
     ("winter coat", "winter coats")),
    (("sandal", "sandals"), ("flip-flop", "flip-flops"), ("summer sandal", "summer sandals"),
     ("strappy sandal", "strappy sandals")),
    (("shirt", "shirts"), ("button-up shirt", "button-up shirts"), ("blouse", "blouses"),
     ("collared shirt", "collared shirts"), ("button-down shirt", "button-down shirts"),
     ("flannel shirt", "flannel shirts")),
    (("sneaker", "sneakers"), ("trainer", "trainers"), ("running shoe", "running shoes"),
     ("tennis shoe", "tennis shoes"), ("athletic shoe", "athletic shoes")),
    (("bag", "bags"), ("handbag", "handbags"), ("purse", "purses"), ("tote bag", "tote bags"),
     ("shoulder bag", "shoulder bags"), ("satchel", "satchels")),
    (("ankle boot", "ankle boots"), ("boot", "boots"), ("bootie", "booties"),
     ("chelsea boot", "chelsea boots"), ("short boot", "short boots")),
)

# Caption templates: {a} singular with its article ("an ankle boot", "a pair of trousers"),
# {n} the bare noun ("ankle boot", "trousers"), {p} plural, {adj} a neutral adjective.
# Prompts used by the evaluation ("a picture of ...", "show me some ...") are deliberately NOT
# here: see multimodal.evaluation.image.HELD_OUT_TEMPLATES.
TEMPLATES = (
    "{n}", "{n}", "{a}", "{a}", "{p}", "a photo of {a}", "a photo of {p}", "a photograph of {a}",
    "an image of {a}", "an image of {p}", "a black and white photo of {a}",
    "a grayscale image of {a}", "a low resolution photo of {a}", "a small photo of {a}",
    "a product photo of {a}", "a catalog image of {a}", "{a} on a black background",
    "{n}, product shot", "{a} for sale", "this is {a}", "it is {a}", "{adj} {n}", "{a_adj}",
    "{p} in a shop", "my {n}", "fashion item: {n}", "{a} in grayscale", "a close-up of {a}",
    "a centered photo of {a}", "a thumbnail of {a}", "an example of {a}", "a {adj} looking {n}",
    "a new {n}", "the {n}", "one {n}", "{adj} {p}",
)
ADJECTIVES = ("plain", "simple", "new", "stylish", "casual", "classic", "modern", "cheap",
              "nice", "fashionable", "comfortable", "cool", "old", "elegant")


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def class_caption(label: int, rng: random.Random) -> str:
    """A caption for class ``label`` (0-9) in a phrasing drawn from ``rng``."""
    # The canonical name half the time, so the plain class name is the best-learned phrase.
    synonyms = SYNONYMS[label]
    singular, plural = synonyms[0] if rng.random() < 0.5 else rng.choice(synonyms)
    noun = singular or plural
    with_article = _article(singular) if singular else f"a pair of {plural}"
    adj = rng.choice(ADJECTIVES)
    adj_article = _article(f"{adj} {singular}") if singular else f"a pair of {adj} {plural}"
    return rng.choice(TEMPLATES).format(a=with_article, n=noun, p=plural, adj=adj,
                                        a_adj=adj_article)


DICTIONARY = Path("/usr/share/dict/words")
_distractors: tuple[str, ...] | None = None


def distractor_words() -> tuple[str, ...]:
    """Ordinary English words to pad captions with: the lower-case 3-8 letter words of
    ``/usr/share/dict/words`` (Debian ``wamerican``), else the template and adjective words."""
    global _distractors
    if _distractors is None:
        words: set[str] = set()
        if DICTIONARY.is_file():
            words = {w for w in DICTIONARY.read_text(encoding="utf-8", errors="ignore").split()
                     if w.isascii() and w.isalpha() and w.islower() and 3 <= len(w) <= 8}
        if not words:
            words = {w for t in TEMPLATES for w in t.split() if w.isalpha()} | set(ADJECTIVES)
        # Never a garment word: a distractor must not name an item.
        items = {w for pairs in SYNONYMS for pair in pairs for phrase in pair if phrase
                 for w in phrase.replace("-", " ").split()}
        items |= {w + "s" for w in items} | {"shirts", "shoe", "shoes", "boots", "jacket", "top"}
        _distractors = tuple(sorted(words - items))
    return _distractors


def add_distractors(caption: str, rng: random.Random) -> str:
    """Put 1-3 random ordinary words before and/or after ``caption``, so the model learns to
    find the item in prompts phrased in ways no template has (a general robustness
    augmentation: the words are arbitrary, not the evaluation's phrasings)."""
    words = distractor_words()
    before = " ".join(rng.choice(words) for _ in range(rng.randint(0, 2)))
    after = " ".join(rng.choice(words) for _ in range(rng.randint(0 if before else 1, 2)))
    return " ".join(part for part in (before, caption, after) if part)


def caption_rng(seed: int, split: str, index: int) -> random.Random:
    """The generator that picks the phrasing of item ``index`` (a pure function of its args)."""
    return random.Random(zlib.crc32(f"{seed}/{split}/{index}".encode()))


# -- shared helpers ------------------------------------------------------------------------------
def uint8_to_float(pixels: np.ndarray):
    """(k, c, h, w) uint8 -> float32 torch tensor in [-1, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(pixels)).float().div_(127.5).sub_(1.0)


def pad_to(pixels: np.ndarray, size: int) -> np.ndarray:
    """Centre (..., h, w) uint8 pixels on a black ``size`` x ``size`` canvas."""
    h, w = pixels.shape[-2:]
    top, left = (size - h) // 2, (size - w) // 2
    out = np.zeros((*pixels.shape[:-2], size, size), dtype=pixels.dtype)
    out[..., top : top + h, left : left + w] = pixels
    return out


WHITE = (255, 255, 255)


def composite(rgba: np.ndarray, background: Sequence[int] = WHITE) -> np.ndarray:
    """Colour (or grey) with alpha over a solid ``background`` (the "over" operator):
    (k, c + 1, h, w) uint8 -> (k, c, h, w) uint8, ``round(v * a + b * (1 - a))`` with ``a`` the
    alpha / 255. ``c`` is 3 (RGBA, ``background`` ``(r, g, b)``) or 1 (LA, ``background`` one
    grey level).

    Computed in 16-bit integers (exactly the rounded float result; a 4000x4000 image needs
    about 100 MB per temporary, not 200).
    """
    channels = rgba.shape[1] - 1
    if len(background) != channels:
        raise ValueError(f"a background of {channels} value(s) is needed, got {background}")
    alpha = rgba[:, channels:].astype(np.uint16)  # (k, 1, h, w)
    mixed = rgba[:, :channels].astype(np.uint16)  # (k, c, h, w)
    mixed *= alpha
    np.subtract(255, alpha, out=alpha)  # now 1 - alpha
    for c, level in enumerate(background):  # in place: no (k, c, h, w) temporary
        mixed[:, c : c + 1] += alpha * np.uint16(level)  # at most 255 * 255: fits in 16 bits
    mixed += 127  # (x + 127) // 255 == round(x / 255): x / 255 is never a half
    mixed //= 255
    return mixed.astype(np.uint8)


def flatten_image(image: Any, background: tuple[int, int, int] = WHITE) -> Any:
    """A PIL image of any mode -> the same picture in mode ``"L"`` (grey) or ``"RGB"``, as an
    image viewer shows it; the size is unchanged.

    * Transparency (modes RGBA, LA, PA, La, RGBa, and P, L or RGB with a transparent colour)
      is composited on ``background`` (white by default, as the emoji training data is
      made: :class:`~multimodal.data.emoji.EmojiDataset`), with :func:`composite`. Grey
      stays grey: LA -> L.
    * 16-bit grey (PNG's ``I;16``, ``I`` holding 0-65535) is scaled to 8 bits, not clipped.
    * ``1`` (black and white) becomes L; P, CMYK, YCbCr and the other colour modes RGB.

    Raises:
        DataError: a mode with no 8-bit reading (32-bit float ``F``, integers outside
            0-65535), or one Pillow cannot convert; the message says what is accepted.
    """
    from PIL import Image

    mode = image.mode
    if mode in ("L", "RGB") and "transparency" not in image.info:
        return image
    if mode == "F" or mode.startswith("I"):
        pixels = np.asarray(image)
        if mode == "F" or pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
            kind = "32-bit float" if mode == "F" else "32-bit integer"
            raise DataError(f"a {mode} image ({kind} pixels) has no 8-bit reading; give an "
                            "8- or 16-bit PNG, a JPEG, or any 8-bit grey, RGB or RGBA image")
        # 16-bit grey: 65535 -> 255 (x / 257, rounded)
        eight = ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(eight)
    grey = mode in ("1", "L", "LA", "La")
    has_alpha = "A" in image.getbands() or "a" in image.getbands() or \
        "transparency" in image.info
    try:
        if not has_alpha:
            return image.convert("L" if grey else "RGB")
        with_alpha = image.convert("LA" if grey else "RGBA")
    except (ValueError, OSError) as exc:
        raise DataError(f"cannot convert a {mode} image to RGB ({exc}); give a grey, RGB or "
                        "RGBA image (PNG, JPEG, ...)") from None
    # band by band: contiguous planes, several times faster than a transposed (h, w, c) view
    pixels = np.stack([np.asarray(band) for band in with_alpha.split()])[None]  # (1, c+1, h, w)
    if grey:
        level = round(0.299 * background[0] + 0.587 * background[1]
                      + 0.114 * background[2])
        return Image.fromarray(composite(pixels, (level,))[0, 0])
    return Image.merge("RGB", [Image.fromarray(band) for band in composite(pixels, background)[0]])


# How an image of another aspect ratio than the target is fitted to it.
ASPECTS = ("stretch", "pad", "crop")


def image_height_width(image_size: Any, *, what: str = "image_size") -> tuple[int, int]:
    """``image_size`` as ``(height, width)``: an integer is a square's side, a pair
    ``[height, width]`` a rectangle (diffusers' order: height first).

    Raises:
        ValueError: anything else than a positive integer or a pair of them, naming ``what``.
    """
    if isinstance(image_size, (list, tuple)) and len(image_size) == 2:
        sides = tuple(image_size)
    else:
        sides = (image_size, image_size)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in sides):
        raise ValueError(f"{what} must be a positive integer (a square's side, e.g. 32) or "
                         f"[height, width] (e.g. [48, 96]), got {image_size!r}")
    return int(sides[0]), int(sides[1])


def size_setting(height: int, width: int) -> int | tuple[int, int]:
    """The ``image_size`` a config writes for ``height`` x ``width``: one integer for a square,
    else ``(height, width)``."""
    return height if height == width else (height, width)


def default_pad_colour(channels: int) -> tuple[int, ...]:
    """The letterbox colour of ``aspect: pad`` when none is given: black for grey images (as
    Fashion-MNIST is padded), white for colour ones (as the emoji are composited)."""
    return (0,) if channels == 1 else WHITE


def fit_image(image: Any, height: int, width: int, *, aspect: str = "stretch",
              pad_colour: int | Sequence[int] | None = None,
              resample: str = "bicubic") -> Any:
    """Fit a PIL image (mode ``L`` or ``RGB``) to ``width`` x ``height`` pixels.

    * ``"stretch"``: resize to exactly that size; an image of another aspect ratio is
      distorted.
    * ``"pad"``: resize to fit inside, keeping the aspect ratio, and centre it on a canvas of
      ``pad_colour`` (letterbox; default :func:`default_pad_colour`).
    * ``"crop"``: cut the largest centred window of the target's aspect ratio, then resize it.

    Resizing is bicubic (antialiased when shrinking) or ``resample="nearest"`` (masks).

    Raises:
        ValueError: an unknown ``aspect``, or a ``pad_colour`` of the wrong length.
    """
    from PIL import Image

    if aspect not in ASPECTS:
        raise ValueError(f"aspect must be one of {', '.join(ASPECTS)}, got {aspect!r}")
    method = Image.Resampling.NEAREST if resample == "nearest" else Image.Resampling.BICUBIC
    w, h = image.size
    if aspect == "crop" and w * height != h * width:
        if w * height > h * width:  # too wide: keep the full height
            crop_w = max(1, round(h * width / height))
            left = (w - crop_w) // 2
            image = image.crop((left, 0, left + crop_w, h))
        else:  # too tall: keep the full width
            crop_h = max(1, round(w * height / width))
            top = (h - crop_h) // 2
            image = image.crop((0, top, w, top + crop_h))
    if aspect != "pad" or w * height == h * width:
        return image if image.size == (width, height) else image.resize((width, height), method)
    scale = min(width / w, height / h)
    inner = (min(width, max(1, round(w * scale))), min(height, max(1, round(h * scale))))
    bands = len(image.getbands())
    colour = default_pad_colour(bands) if pad_colour is None else (
        (pad_colour,) if isinstance(pad_colour, int) else tuple(pad_colour))
    if bands == 1 and len(colour) == 3:  # an RGB colour on grey: its luma (ITU-R 601)
        colour = (round(0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]),)
    elif bands == 3 and len(colour) == 1:
        colour = colour * 3
    if len(colour) != bands:
        raise ValueError(f"pad_colour must be one grey level or [r, g, b], got {pad_colour!r}")
    canvas = Image.new(image.mode, (width, height), colour[0] if bands == 1 else colour)
    resized = image if image.size == inner else image.resize(inner, method)
    canvas.paste(resized, ((width - inner[0]) // 2, (height - inner[1]) // 2))
    return canvas


def pil_to_array(image: Any, *, size: int | Sequence[int], channels: int,
                 resample: str = "bicubic", aspect: str = "stretch",
                 pad_colour: int | Sequence[int] | None = None) -> np.ndarray:
    """A PIL image of any mode and size -> (c, h, w) uint8, the way training images are made.

    The image is first flattened (:func:`flatten_image`: transparency composited on white,
    16-bit grey scaled to 8 bits), then converted to grey (``channels`` 1: ITU-R 601 luma) or
    RGB (``channels`` 3; grey is repeated). ``size`` is a square's side or ``(height,
    width)``. A 28x28 image (Fashion-MNIST's size) is padded with black to 32x32, exactly as
    the training data; any other size, 1x1 to thousands of pixels a side, is fitted to
    ``size`` by :func:`fit_image` as ``aspect`` says (``"stretch"`` by default: resized, the
    aspect ratio not kept; ``"pad"``: letterboxed on ``pad_colour``; ``"crop"``: centre crop),
    bicubic (antialiased when shrinking) or ``resample="nearest"`` for masks.

    Raises:
        DataError: a mode :func:`flatten_image` refuses, or an empty (0-pixel) image.
        ValueError: a bad ``size``, ``aspect`` or ``pad_colour``.
    """
    height, width = image_height_width(size, what="size")
    if image.width < 1 or image.height < 1:
        raise DataError(f"the image is empty ({image.width}x{image.height} pixels)")
    image = flatten_image(image).convert("L" if channels == 1 else "RGB")
    if image.size == (28, 28) and (height, width) == (32, 32):
        pixels = np.asarray(image)
        pixels = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
        return pad_to(pixels, 32)
    image = fit_image(image, height, width, aspect=aspect, pad_colour=pad_colour,
                      resample=resample)
    pixels = np.asarray(image)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


# -- Fashion-MNIST -----------------------------------------------------------------------------
_IDX_CACHE: dict[tuple[str, float], np.ndarray] = {}
_IDX_LOCK = threading.Lock()


def read_idx(path: Path) -> np.ndarray:
    """Decode a gzipped IDX file (LeCun's MNIST format) into a uint8 array, cached in memory.

    Raises:
        DataError: missing, unreadable or not an unsigned-byte IDX file.
    """
    key = (str(path), path.stat().st_mtime if path.is_file() else 0.0)
    with _IDX_LOCK:
        if key in _IDX_CACHE:
            return _IDX_CACHE[key]
        try:
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        except (OSError, EOFError) as exc:
            raise DataError(f"cannot read IDX file {path}: {exc}") from None
        if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08:
            raise DataError(f"{path} is not an unsigned-byte IDX file")
        ndim = raw[3]
        offset = 4 + 4 * ndim
        shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
        if len(raw) < offset or len(raw) - offset != int(np.prod(shape)):
            raise DataError(f"{path} is not a valid IDX file: its header says shape {shape} "
                            f"but it holds {max(0, len(raw) - offset)} bytes of data")
        array = np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)
        _IDX_CACHE[key] = array
        return array


class _ImageItems(Sequence[dict]):
    """Item access shared by the image datasets: ``{"image", "caption", "label"}`` built from
    the subclass's ``get_images``, ``caption`` and ``labels``."""

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index %= len(self)
        return {"image": self.get_images([index])[0], "caption": self.caption(index),
                "label": self.labels[index]}


class _MadeCaptions(_ImageItems):
    """Image datasets whose captions are made per item by ``caption(i)`` (not read from a
    list): ``captions`` makes them all once."""

    _captions: list[str] | None = None

    @property
    def captions(self) -> list[str]:
        """Every item's caption, in order."""
        if self._captions is None:
            self._captions = [self.caption(i) for i in range(len(self))]
        return self._captions


@datasets.register("fashion_mnist")
class FashionMNISTDataset(_MadeCaptions):
    """Fashion-MNIST with captions: 60,000 training and 10,000 test images of 10 classes.

    Items: ``{"image": (1, 32, 32) float in [-1, 1], "caption": str, "label": int}``; labels are
    0 t-shirt/top, 1 trouser, 2 pullover, 3 dress, 4 coat, 5 sandal, 6 shirt, 7 sneaker,
    8 bag, 9 ankle boot.

    Args:
        split: ``"train"`` (the 60k train file) or ``"val"`` (the 10k t10k file); set by the
            builder.
        root: Directory of the IDX files (default ``/usr/share/datasets/fashion-mnist``).
        caption_seed: Seed of the caption phrasings (default 0).
        max_items: Keep only the first this many items (default: all); the files are shuffled,
            so a prefix is close to class-balanced.
        distractor_rate: Share of captions padded with 1-3 random ordinary words before
            and/or after (see :func:`add_distractors`; default 0).

    Raises:
        DataError: a file is missing (install it: ``apt-get install dataset-fashion-mnist``)
            or malformed.
    """

    injected_args = ("split",)

    def __init__(self, *, split: Literal["train", "val"] = "train", root: str = FASHION_MNIST_DIR,
                 caption_seed: int = 0, max_items: int | None = None,
                 distractor_rate: float = 0.0):
        check_split(split)
        if not 0.0 <= distractor_rate <= 1.0:
            raise DataError(f"distractor_rate must be in [0, 1], got {distractor_rate}")
        self.distractor_rate = distractor_rate
        if max_items is not None and max_items < 1:
            raise DataError(f"max_items must be >= 1 or null, got {max_items}")
        image_file, label_file = (Path(root) / f for f in FASHION_MNIST_FILES[split])
        missing = [str(p) for p in (image_file, label_file) if not p.is_file()]
        if missing:
            raise DataError(f"Fashion-MNIST file(s) not found: {', '.join(missing)}; install them "
                            "with `apt-get install dataset-fashion-mnist` or set data.image.root")
        pixels, labels = read_idx(image_file), read_idx(label_file)
        if pixels.ndim != 3 or labels.ndim != 1 or len(pixels) != len(labels):
            raise DataError(f"{image_file} and {label_file} do not match: images "
                            f"{pixels.shape}, labels {labels.shape}")
        stop = len(labels) if max_items is None else min(max_items, len(labels))
        self.split, self.caption_seed = split, caption_seed
        self._pixels = pixels[:stop]  # (k, 28, 28) uint8, shared with the cache
        self.labels: list[int] = labels[:stop].astype(np.int64).tolist()
        self._captions: list[str] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def caption(self, index: int) -> str:
        """The caption of item ``index``."""
        rng = caption_rng(self.caption_seed, self.split, index)
        caption = class_caption(self.labels[index], rng)
        if self.distractor_rate and rng.random() < self.distractor_rate:
            caption = add_distractors(caption, rng)
        return caption

    def get_images(self, indices: Sequence[int] | slice | None = None):
        """Images (k, 1, 32, 32) float in [-1, 1] of ``indices`` (default: all)."""
        chosen = self._pixels if indices is None else self._pixels[indices]
        return uint8_to_float(pad_to(chosen, 32)[:, None])



# -- a user's images -----------------------------------------------------------------------------
@datasets.register("image_folder")
class ImageFolderDataset(_ImageItems):
    """A user's own images with captions, listed in a JSONL or CSV file.

    JSONL: one object a line, ``{"image": "shoes/001.png", "caption": "a red shoe"}`` with an
    optional integer ``"label"``. CSV: a header row naming ``image`` and ``caption`` (and
    optionally ``label``) columns. Image paths are relative to the list file's directory (or
    ``root``). Images of any size and mode (grey, RGB, RGBA, P, 16-bit grey, ...) are read with
    Pillow as a viewer shows them (transparency composited on white, as the emoji data is made;
    :func:`pil_to_array`), converted to grayscale (``channels: 1``) or RGB (``channels: 3``) and
    fitted to ``image_size`` (a square's side, or ``[height, width]``) as ``aspect`` says (28x28
    images are padded with black instead when ``image_size`` is 32, like Fashion-MNIST).
    ``channels`` and ``image_size`` must be the model's (the image VAE's ``in_channels`` and
    ``image_size``; training checks it): 3 and 64 to fine-tune the emoji model.

    Items: ``{"image": (channels, height, width) float in [-1, 1], "caption": str,
    "label": int (-1 if none)}``.

    Args:
        path: The ``.jsonl`` or ``.csv`` file.
        split: ``"train"`` or ``"val"`` (set by the builder); decided by a CRC32 of each image
            path, so it is stable when records are added.
        root: Directory the image paths are relative to (default: the list file's directory).
        image_size: Side of square images, or ``[height, width]`` (e.g. ``[48, 96]`` for
            images twice as wide as high) (default 32).
        channels: 1 (grayscale) or 3 (RGB) (default 1).
        aspect: How an image of another aspect ratio than ``image_size`` is fitted:
            ``"stretch"`` (default: resized to it, distorted), ``"pad"`` (resized to fit inside
            and letterboxed on ``pad_colour``) or ``"crop"`` (the largest centred window of
            ``image_size``'s aspect ratio, resized).
        pad_colour: The letterbox colour of ``aspect: pad``: a grey level 0-255 or ``[r, g,
            b]`` (default: black for ``channels: 1``, as Fashion-MNIST is padded; white for
            ``channels: 3``, as transparency is composited).
        val_fraction: Share of records held out for validation (default 0.05).

    Raises:
        DataError: a bad ``channels``, ``image_size``, ``aspect`` or ``pad_colour``; the list
            file is missing, malformed (names the line), or names an image that does not
            exist; an image that cannot be decoded (or has no 8-bit reading, like 32-bit float)
            is reported when it is read.
    """

    injected_args = ("split",)

    def __init__(self, *, path: str, split: Literal["train", "val"] = "train",
                 root: str | None = None, image_size: int | tuple[int, int] = 32,
                 channels: Literal[1, 3] = 1,
                 aspect: Literal["stretch", "pad", "crop"] = "stretch",
                 pad_colour: int | tuple[int, int, int] | None = None,
                 val_fraction: float = 0.05):
        check_split(split)
        if channels not in (1, 3):
            raise DataError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
        try:
            self.height, self.width = image_height_width(image_size)
        except ValueError as exc:
            raise DataError(f"{exc} (the model's size)") from None
        if aspect not in ASPECTS:
            raise DataError(f"aspect must be one of {', '.join(ASPECTS)} (how an image of "
                            f"another aspect ratio is fitted), got {aspect!r}")
        levels = [pad_colour] if isinstance(pad_colour, int) else list(pad_colour or [])
        if pad_colour is not None and (len(levels) not in (1, 3) or not all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255
                for v in levels)):
            raise DataError(f"pad_colour must be a grey level 0-255 or [r, g, b] of 0-255, got "
                            f"{pad_colour!r}")
        _, self.paths, self.captions, self.labels = read_media_split(
            path, "image", split=split, val_fraction=val_fraction, root=root)
        self.image_size = size_setting(self.height, self.width)
        self.channels, self.aspect, self.pad_colour = channels, aspect, pad_colour
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def _pixels(self, index: int) -> np.ndarray:
        if index not in self._cache:
            from PIL import Image, UnidentifiedImageError

            try:
                with Image.open(self.paths[index]) as image:
                    self._cache[index] = pil_to_array(
                        image, size=(self.height, self.width), channels=self.channels,
                        aspect=self.aspect, pad_colour=self.pad_colour)
            except (UnidentifiedImageError, OSError, ValueError,
                    Image.DecompressionBombError) as exc:
                raise DataError(f"cannot read image {self.paths[index]}: {exc}") from None
        return self._cache[index]

    def get_images(self, indices: Sequence[int] | slice | None = None):
        """Images (k, c, h, w) float in [-1, 1] of ``indices`` (default: all)."""
        chosen = range(len(self))[indices] if isinstance(indices, slice) else (
            range(len(self)) if indices is None else indices)
        c, h, w = self.channels, self.height, self.width
        pixels = np.stack([self._pixels(int(i)) for i in chosen]) if len(chosen) else \
            np.zeros((0, c, h, w), np.uint8)
        return uint8_to_float(pixels)

    def caption(self, index: int) -> str:
        """The caption of item ``index``."""
        return self.captions[index]
