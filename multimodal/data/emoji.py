"""Colour emoji artwork with captions: about 1,900 named concepts drawn in three independent,
openly licensed styles, from pinned npm packages.

* ``twemoji``: Twitter's Twemoji, ``emoji-datasource-twitter@16.0.0`` (64x64 RGBA PNGs under
  ``img/twitter/64/``; flat shapes, no outline).
* ``noto``: Google's Noto Color Emoji, ``emoji-datasource-google@16.0.0`` (64x64 RGBA PNGs
  under ``img/google/64/``; shaded).
* ``openmoji``: OpenMoji, ``openmoji@17.0.0`` (colour SVGs under ``color/svg/``, rasterised
  with cairosvg; black outlines).

Apple's and Facebook's sets of the same family are not used: their images are not openly
licensed.

Fetching. Each package is downloaded once with ``npm pack NAME@VERSION`` (a tarball, nothing
installed, no script run) into ``$MULTIMODAL_CACHE/emoji/archives`` (default
``~/.cache/multimodal``), and its sha256 is checked against :data:`PACKAGES`. A cached archive
that does not match (a broken download, a corrupted disk) is fetched again; a fresh download
that still does not match is an error. The images are decoded (SVGs rasterised) once per
package and image size and cached as RGBA uint8 arrays next to the archives, so later runs read
one file. Nothing is fetched at generation time.

Concepts. A concept is one entry of ``emoji.json`` (its skin-tone variants are the same
concept), in ``emoji.json``'s sort order; an item's ``label`` is the concept's index in that
list, the same for every split and style selection. Names come from ``emoji.json`` (the Unicode
name, the short names) and from ``data/openmoji.json`` (the CLDR short name, e.g. "backhand
index pointing left", and CLDR keywords). The ``Component`` category (bare skin-tone
swatches, hair styles) is left out, and so are OpenMoji's own extras and the few emoji newer
than ``emoji-datasource`` 16 (they exist in one style only).

Split. By concept: a CRC32 of the concept's code decides (:func:`multimodal.data.in_split`), so
the validation split holds whole concepts, none of which the training split has seen in any
style or skin tone.

Captions. The phrasing of item ``i`` is a pure function of ``(caption_seed, split, i)``: a name
of the concept (the CLDR name half the time, else the Unicode name or a short name), in one of
:data:`TEMPLATES` (some add CLDR keywords or the category), the skin tone where there is one
("with medium-dark skin tone"), and with probability ``style_rate`` the style ("in the Twemoji
style", "Noto emoji", "outlined", "flat", ...: :data:`STYLE_PHRASES`). The phrasings of
:data:`HELD_OUT_TEMPLATES` never appear in training captions; :meth:`EmojiDataset.held_out_prompt`
makes evaluation prompts from them.

Items (the same contract as :mod:`multimodal.data.images`)::

    {"image": float tensor (3, s, s) in [-1, 1], "caption": str, "label": int}

with bulk access ``get_images(indices)`` -> (k, 3, s, s), ``captions``, ``labels``; per item
``item_styles`` and ``tones`` (``None`` or a phrase); per distinct image ``image_concepts``,
``image_styles``, ``image_tones``, with ``item_images`` mapping items to images (an image has
``captions_per_image`` items, so the image modality encodes it once).

Axes: k items, c channels (RGBA 4, RGB 3), s image side.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import subprocess
import tarfile
import tempfile
import warnings
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from multimodal.data import check_split, in_split
from multimodal.data.images import _MadeCaptions, composite, uint8_to_float
from multimodal.errors import DataError, did_you_mean
from multimodal.io import atomic_write_bytes, cache_root, sha256_file
from multimodal.registry import datasets


@dataclass(frozen=True)
class Package:
    """One pinned npm package of emoji artwork.

    Attributes:
        name, version: What ``npm pack NAME@VERSION`` fetches.
        sha256: The hex sha256 of that tarball (``NAME-VERSION.tgz``).
        images: The folder of the artwork inside the package (under ``package/``).
        kind: ``"datasource"`` (PNGs + ``emoji.json``) or ``"openmoji"`` (SVGs +
            ``data/openmoji.json``).
    """

    name: str
    version: str
    sha256: str
    images: str
    kind: Literal["datasource", "openmoji"]

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}.tgz"  # how npm pack names an unscoped package


# The sha256 of each tarball as the npm registry served it (fetched 2026-12-03).
PACKAGES: dict[str, Package] = {
    "twemoji": Package("emoji-datasource-twitter", "16.0.0",
                       "f64a530c63bca463bd8317fdc4615ce63a53a0c65018e4ce2d848aaba7a28877",
                       "img/twitter/64", "datasource"),
    "noto": Package("emoji-datasource-google", "16.0.0",
                    "fb5fd131b362aab7a55542d2a147a79708cce0a8b1c1bbacd470172708b5c438",
                    "img/google/64", "datasource"),
    "openmoji": Package("openmoji", "17.0.0",
                        "55ee7d13485dec86e9f38c1f3a645a13382d33ff97c0cd845ee824b0aef45e68",
                        "color/svg", "openmoji"),
}
STYLES = tuple(PACKAGES)
# Names a user may reach for, for the did-you-mean of an unknown style.
STYLE_ALIASES = {"twitter": "twemoji", "google": "noto", "noto_color_emoji": "noto",
                 "open_moji": "openmoji"}
OPENMOJI_META = "data/openmoji.json"
DATASOURCE_META = "emoji.json"
RASTER_FORMAT = 1  # bump when the decoding or rasterising changes, to rebuild caches
NPM_TIMEOUT = 1800  # seconds for one `npm pack` (the largest package is ~75 MB)

SKIN_TONES = {"1F3FB": "light", "1F3FC": "medium-light", "1F3FD": "medium",
              "1F3FE": "medium-dark", "1F3FF": "dark"}

# Caption templates: {n} a name, {a} the name with an article, {kw} a CLDR keyword (templates
# with {kw} are used only for concepts that have keywords), {cat} the category in words.
# The evaluation's phrasings are deliberately NOT here: see HELD_OUT_TEMPLATES.
TEMPLATES = (
    "{n}", "{n}", "{n}", "{a}", "{a}", "{n} emoji", "{a} emoji", "an emoji of {a}",
    "emoji of {a}", "emoji: {n}", "an icon of {a}", "{n} icon", "a small icon of {a}",
    "{n} sticker", "clip art of {a}", "a cartoon {n}", "an illustration of {a}",
    "{a} on a plain background", "a single {n}", "the {n} emoji", "a cute {n}",
    "a colourful {n}", "a colorful emoji of {a}", "{n}, emoji art", "{cat} emoji: {n}",
    "{a} ({cat})", "{n}, {kw}", "{a}, {kw}", "{kw}: {n}", "an emoji of {a}, {kw}",
)
# Never used in training: prompts for evaluating phrasings the model has not seen.
HELD_OUT_TEMPLATES = (
    "a picture of {a}", "show me {a}", "I would like {a}", "{n}, please", "generate {a}",
    "here is {a}", "can you make {a}?", "draw {a}", "a drawing of {a}", "I want to see {a}",
)
STYLE_PHRASES = {
    "twemoji": ("in the Twemoji style", "Twemoji", "Twitter emoji style", "flat",
                "flat style", "in a flat style", "flat design"),
    "noto": ("in the Noto style", "Noto emoji", "Noto Color Emoji", "Google emoji style",
             "shaded", "in a shaded style", "glossy"),
    "openmoji": ("in the OpenMoji style", "OpenMoji", "OpenMoji style", "outlined",
                 "with black outlines", "in an outlined style", "line art with colour"),
}
TONE_PHRASES = ("{n} with {t} skin tone", "{n}, {t} skin tone", "{n}: {t} skin tone",
                "{n} with {t} skin")


# -- fetching and checking -----------------------------------------------------------------------
def fetch_package(package: Package, *, cache_dir: Path, npm: str = "npm",
                  archive_dir: str | Path | None = None) -> Path:
    """The checked tarball of ``package``, fetched with ``npm pack`` when not cached.

    Args:
        package: What to fetch and its pinned sha256.
        cache_dir: The emoji cache; archives live in ``cache_dir/archives``.
        npm: The npm command (a name on ``PATH`` or a path).
        archive_dir: A folder that already holds ``NAME-VERSION.tgz`` (copied from another
            machine): read from there, never fetched; the sha256 must match all the same.

    Returns:
        The archive's path.

    Raises:
        DataError: npm is missing, the registry cannot give the pinned package, or the
            archive's sha256 differs from the pinned one after a fresh download (or in
            ``archive_dir``). Each message says what to install or do.
    """
    if archive_dir is not None:
        path = Path(os.path.expanduser(str(archive_dir))) / package.filename
        if not path.is_file():
            raise DataError(f"{package.filename} (npm package {package.spec}) is not in "
                            f"archive_dir {path.parent}; fetch it with `npm pack {package.spec}` "
                            "there, or leave archive_dir unset to fetch it into the cache")
        digest = sha256_file(path)
        if digest != package.sha256:
            raise DataError(f"{path} has sha256 {digest}, but {package.spec} is pinned to "
                            f"{package.sha256}; replace it with a fresh `npm pack "
                            f"{package.spec}`")
        return path
    directory = Path(cache_dir) / "archives"
    path = directory / package.filename
    if path.is_file():
        digest = sha256_file(path)
        if digest == package.sha256:
            return path
        warnings.warn(f"the cached archive {path} is corrupted (sha256 {digest[:12]}..., pinned "
                      f"{package.sha256[:12]}...); fetching {package.spec} again", stacklevel=2)
        path.unlink()
    directory.mkdir(parents=True, exist_ok=True)
    _npm_pack(package, directory, npm)
    digest = sha256_file(path)
    if digest != package.sha256:
        path.unlink()
        raise DataError(f"the npm registry served {package.spec} with sha256 {digest}, but it "
                        f"is pinned to {package.sha256}: the package changed or the download is "
                        "broken; nothing was kept. Try again, or check the registry npm uses "
                        "(`npm config get registry`)")
    return path


def _npm_pack(package: Package, directory: Path, npm: str) -> None:
    """Run ``npm pack NAME@VERSION`` into a temporary folder of ``directory``, then move the
    tarball to ``directory/NAME-VERSION.tgz`` (so a broken download never sits there)."""
    with tempfile.TemporaryDirectory(prefix=".npm-pack-", dir=directory) as tmp:
        try:
            out = subprocess.run([npm, "pack", package.spec, "--ignore-scripts", "--silent"],
                                 cwd=tmp, capture_output=True, text=True, timeout=NPM_TIMEOUT)
        except FileNotFoundError:
            raise DataError(
                f"npm is not installed, and the emoji data needs it once to fetch "
                f"{package.spec}: install Node.js and npm (`apt-get install npm` on Debian or "
                f"Ubuntu), or put {package.filename} (from `npm pack {package.spec}` on another "
                "machine) in a folder and name it in data.image.archive_dir") from None
        except subprocess.TimeoutExpired:
            raise DataError(f"`npm pack {package.spec}` did not finish in {NPM_TIMEOUT} s; "
                            "check the network to the npm registry") from None
        except OSError as exc:
            raise DataError(f"cannot run npm ({npm!r}) to fetch {package.spec}: {exc}") from None
        fetched = Path(tmp) / package.filename
        if out.returncode != 0 or not fetched.is_file():
            lines = [ln.strip() for ln in (out.stderr or out.stdout or "").splitlines()
                     if ln.strip()]
            reason = next((ln for ln in lines if re.search(r"E404|ETARGET|ENOTFOUND|EAI_AGAIN|"
                                                           r"ECONNREFUSED|code E", ln)),
                          lines[-1] if lines else f"exit status {out.returncode}")
            raise DataError(f"npm could not fetch the pinned package {package.spec} ({reason}); "
                            f"the npm registry must be reachable and hold that version (check "
                            f"with `npm view {package.spec} version`), or put "
                            f"{package.filename} in a folder named by data.image.archive_dir")
        shutil.move(str(fetched), directory / package.filename)


def read_members(archive: Path, wanted) -> dict[str, bytes]:
    """``{path inside package/: bytes}`` of the regular files of a package tarball for which
    ``wanted(path)`` is true, in one pass.

    Raises:
        DataError: the archive cannot be read (truncated, not gzip).
    """
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = member.name.split("/", 1)[1] if "/" in member.name else member.name
                if member.isfile() and wanted(name):
                    found[name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"cannot read the package archive {archive}: {exc}; delete it to fetch "
                        "it again") from None
    return found


# -- concepts ----------------------------------------------------------------------------------
def code_key(code: str) -> str:
    """A code point sequence (``"2764-fe0f"``) as compared here: upper case, no variation
    selector 16 (``"2764"``); emoji-datasource and OpenMoji differ in where they write it."""
    return "-".join(p for p in code.upper().split("-") if p != "FE0F")


def tone_phrase(code: str) -> str | None:
    """The skin tone(s) of a code sequence in words (``"medium-dark"``, ``"light and dark"``),
    or ``None`` without a skin-tone modifier."""
    tones = [SKIN_TONES[p] for p in code.upper().split("-") if p in SKIN_TONES]
    unique = list(dict.fromkeys(tones))
    return " and ".join(unique) if unique else None


def _clean_name(name: str) -> str:
    """A display name in plain words: lower case, ``flag: France`` -> ``flag of france``."""
    name = name.strip().lower()
    if name.startswith("flag: "):
        name = "flag of " + name[len("flag: "):]
    return re.sub(r"\s+", " ", name.replace(": ", ", ").replace("_", " ")).strip()


def _short_name_phrase(short: str) -> str | None:
    """``"heart_hands"`` -> ``"heart hands"``; ``None`` for codes such as ``flag-fr``."""
    if re.fullmatch(r"flag-[a-z]{2}(-[a-z0-9]+)?|[a-z]{2}", short):
        return None
    return short.replace("_", " ").replace("-", " ").strip() or None


@dataclass
class Concept:
    """One named thing (an ``emoji.json`` entry), whatever its style or skin tone.

    Attributes:
        key: The code sequence (:func:`code_key`), e.g. ``"1F34E"``.
        name: The canonical name: the CLDR short name from OpenMoji where there is one, else
            ``emoji.json``'s name, in plain lower-case words (``"red apple"``).
        names: Every name for captions: the canonical one, the Unicode name, the short names.
        keywords: CLDR and OpenMoji keywords (may be empty).
        category, subcategory: ``emoji.json``'s (``"Food & Drink"``, ``"food-fruit"``).
    """

    key: str
    name: str
    names: tuple[str, ...]
    keywords: tuple[str, ...]
    category: str
    subcategory: str


def build_concepts(emoji_json: list[dict], openmoji_json: list[dict] | None) -> list[Concept]:
    """The concepts of ``emoji.json`` in its sort order, named with OpenMoji's CLDR data when
    given (the ``Component`` category is left out)."""
    cldr = {}
    for entry in openmoji_json or ():
        if not entry.get("skintone"):
            cldr[code_key(entry["hexcode"])] = entry
    concepts = []
    for entry in sorted(emoji_json, key=lambda e: e.get("sort_order", 0)):
        if entry.get("category") == "Component":
            continue
        key = code_key(entry["unified"])
        extra = cldr.get(key, {})
        unicode_name = _clean_name(entry.get("name") or entry["short_name"])
        canonical = _clean_name(extra["annotation"]) if extra.get("annotation") else unicode_name
        shorts = [_short_name_phrase(s) for s in entry.get("short_names") or ()]
        names = tuple(dict.fromkeys([canonical, unicode_name, *(s for s in shorts if s)]))
        words = [w.strip().lower() for field in ("tags", "openmoji_tags")
                 for w in (extra.get(field) or "").split(",")]
        keywords = tuple(dict.fromkeys(w for w in words if w and w not in names))
        concepts.append(Concept(key=key, name=canonical, names=names, keywords=keywords,
                                category=entry.get("category", ""),
                                subcategory=entry.get("subcategory", "")))
    return concepts


def _article(phrase: str) -> str:
    if phrase.endswith("s") and not phrase.endswith("ss"):  # a plural-looking name: no article
        return phrase
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def emoji_caption(concept: Concept, style: str, tone: str | None, rng: random.Random, *,
                  style_rate: float, templates: Sequence[str] = TEMPLATES) -> str:
    """A caption for ``concept`` drawn in ``style`` with skin ``tone``, phrased by ``rng``.

    The style is named with probability ``style_rate``; the tone always when there is one.
    """
    name = concept.name if rng.random() < 0.5 else rng.choice(concept.names)
    if tone is not None:
        name = rng.choice(TONE_PHRASES).format(n=name, t=tone)
    usable = [t for t in templates if concept.keywords or "{kw}" not in t]
    template = rng.choice(usable)
    keyword = rng.choice(concept.keywords) if concept.keywords else ""
    category = concept.category.lower().replace(" & ", " and ")
    caption = template.format(n=name, a=_article(name), kw=keyword, cat=category)
    if rng.random() < style_rate:
        phrase = rng.choice(STYLE_PHRASES[style])
        caption = f"{caption} {phrase}" if phrase.startswith(("in ", "with ")) else \
            f"{caption}, {phrase}"
    return caption


def caption_rng(seed: int, split: str, index: int) -> random.Random:
    """The generator that phrases item ``index`` (a pure function of its arguments)."""
    return random.Random(zlib.crc32(f"emoji/{seed}/{split}/{index}".encode()))


# -- decoding and rasterising ------------------------------------------------------------------
def _png_rgba(data: bytes, size: int) -> np.ndarray:
    """PNG bytes -> (4, size, size) uint8 RGBA (resized with premultiplied alpha if needed)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("RGBA")
        if image.size != (size, size):  # resize premultiplied, so no dark fringes
            image = image.convert("RGBa").resize((size, size), Image.Resampling.LANCZOS)
            image = image.convert("RGBA")
        return np.asarray(image).transpose(2, 0, 1).copy()


def _svg_rgba(data: bytes, size: int) -> np.ndarray:
    """SVG bytes -> (4, size, size) uint8 RGBA through cairosvg."""
    import cairosvg  # deferred: only the OpenMoji style needs it (and the cairo library)

    return _png_rgba(cairosvg.svg2png(bytestring=data, output_width=size, output_height=size),
                     size)


def _check_rasteriser() -> None:
    try:
        import cairosvg  # noqa: F401  deferred: only the OpenMoji style needs it
    except (ImportError, OSError) as exc:
        raise DataError(f"the OpenMoji style needs cairosvg to rasterise its SVGs ({exc}): "
                        "install it with `pip install cairosvg` (it needs the cairo library: "
                        "`apt-get install libcairo2`), or leave 'openmoji' out of "
                        "data.image.styles") from None


def load_style(style: str, archive: Path, *, size: int, cache_dir: Path) -> dict[str, Any]:
    """The artwork of one style at ``size``, decoded once and cached.

    Returns:
        ``{"codes": [code sequence of each image], "rgba": (k, 4, size, size) uint8,
        "meta": the package's emoji.json or openmoji.json}``.

    Raises:
        DataError: the archive lacks its metadata or images, or cannot be read.
    """
    from safetensors.numpy import load_file, save

    package = PACKAGES[style]
    sha = sha256_file(archive)[:16]
    stem = Path(cache_dir) / "rasters" / f"{style}-{sha}-{size}px-v{RASTER_FORMAT}"
    arrays, index = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    if arrays.is_file() and index.is_file():
        try:
            info = json.loads(index.read_text(encoding="utf-8"))
            rgba = load_file(arrays)["rgba"]
            if len(info["codes"]) == len(rgba):
                return {"codes": info["codes"], "rgba": rgba, "meta": info["meta"]}
        except (OSError, ValueError, KeyError):
            pass  # a broken cache file: rebuild it below
    meta_name = DATASOURCE_META if package.kind == "datasource" else OPENMOJI_META
    suffix = ".png" if package.kind == "datasource" else ".svg"
    prefix = package.images.rstrip("/") + "/"
    if package.kind == "openmoji":
        _check_rasteriser()
    members = read_members(archive, lambda n: n == meta_name or (
        n.startswith(prefix) and n.endswith(suffix) and "/" not in n[len(prefix):]))
    if meta_name not in members:
        raise DataError(f"{archive} holds no {meta_name}: not the {package.spec} package; "
                        "delete it to fetch it again")
    meta = json.loads(members.pop(meta_name))
    if not members:
        raise DataError(f"{archive} holds no images under {prefix}: not the {package.spec} "
                        "package; delete it to fetch it again")
    decode = _png_rgba if package.kind == "datasource" else _svg_rgba
    wanted = _wanted_codes(style, meta)
    codes, images = [], []
    for name in sorted(members):
        code = name[len(prefix):-len(suffix)]
        if wanted is not None and code_key(code) not in wanted:
            continue
        try:
            images.append(decode(members[name], size))
        except Exception as exc:  # a broken file in the package: name it
            raise DataError(f"cannot decode {name} of {package.spec} ({type(exc).__name__}: "
                            f"{exc})") from None
        codes.append(code)
    rgba = np.stack(images) if images else np.zeros((0, 4, size, size), np.uint8)
    arrays.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(arrays, save({"rgba": np.ascontiguousarray(rgba)}))
    atomic_write_bytes(index, json.dumps({"codes": codes, "meta": meta}).encode("utf-8"))
    return {"codes": codes, "rgba": rgba, "meta": meta}


def _wanted_codes(style: str, meta: list[dict]) -> set[str] | None:
    """The image codes worth decoding for OpenMoji: its Unicode emoji (not its extras, which
    no other style draws); ``None`` (all) for the PNG sets."""
    if PACKAGES[style].kind != "openmoji":
        return None
    return {code_key(e["hexcode"]) for e in meta
            if not str(e.get("group", "")).startswith("extras") and e.get("group") != "component"}


def parse_background(background: str | Sequence[int]) -> tuple[int, int, int]:
    """A colour name (``"white"``, ``"black"``, ``"gray"``), ``"#rrggbb"`` or ``[r, g, b]``
    (0-255) -> ``(r, g, b)``.

    Raises:
        DataError: not a colour.
    """
    from PIL import ImageColor

    if isinstance(background, (list, tuple)):
        if len(background) == 3 and all(isinstance(v, int) and 0 <= v <= 255
                                        for v in background):
            return tuple(background)  # type: ignore[return-value]
    elif isinstance(background, str):
        try:
            return ImageColor.getrgb(background)[:3]
        except ValueError:
            pass
    raise DataError(f"background must be a colour name ('white', 'black', 'gray', ...), "
                    f"'#rrggbb' or [r, g, b] with values 0-255, got {background!r}")


# -- the dataset ---------------------------------------------------------------------------------
@datasets.register("emoji")
class EmojiDataset(_MadeCaptions):
    """Colour emoji of ~1,900 named concepts in up to three styles, with captions (see the
    module docstring).

    Items: ``{"image": (3, s, s) float in [-1, 1], "caption": str, "label": concept index}``.

    Args:
        split: ``"train"`` or ``"val"`` (set by the builder); by concept.
        styles: The styles to use, any of ``"twemoji"``, ``"noto"``, ``"openmoji"``
            (default all three; leave one out to hold that style out).
        image_size: Side ``s`` of the square images in pixels (default 64, the PNGs' size;
            PNGs are resized to other sizes, SVGs rasterised at it).
        background: The colour the transparent parts are composited on: a name, ``"#rrggbb"``
            or ``[r, g, b]`` (default ``"white"``).
        skin_tones: Keep the skin-tone variants (default ``True``; else only the base images).
        val_fraction: Share of concepts held out for validation (default 0.1).
        caption_seed: Seed of the caption phrasings (default 0).
        style_rate: Share of captions that name the style (default 0.5).
        captions_per_image: Items per image, each with its own phrasing (default 1).
        max_items: Keep only the first this many items (default: all), in concept order.
        cache_dir: Where archives and rasters are cached (default ``$MULTIMODAL_CACHE/emoji``,
            else ``~/.cache/multimodal/emoji``).
        archive_dir: A folder holding the package tarballs (``NAME-VERSION.tgz``), read instead
            of fetching with npm; their sha256 must match the pinned ones (default: fetch).
        npm: The npm command used to fetch (default ``"npm"``).
        sha256: Expected sha256 per style, replacing the pinned :data:`PACKAGES` values (for a
            locally built archive, e.g. in tests; default: the pinned ones).

    Raises:
        DataError: an unknown style, a bad argument, npm missing or the pinned package
            unavailable, an archive whose checksum does not match after a fresh download,
            cairosvg missing for OpenMoji; each says what is accepted or what to install.
    """

    injected_args = ("split",)

    def __init__(self, *, split: Literal["train", "val"] = "train",
                 styles: tuple[str, ...] = STYLES, image_size: int = 64,
                 background: str | tuple[int, int, int] = "white", skin_tones: bool = True,
                 val_fraction: float = 0.1, caption_seed: int = 0, style_rate: float = 0.5,
                 captions_per_image: int = 1, max_items: int | None = None,
                 cache_dir: str | None = None, archive_dir: str | None = None,
                 npm: str = "npm", sha256: dict[str, str] | None = None):
        check_split(split)
        self.styles = check_styles(styles)
        self.background = parse_background(background)
        problems = []
        if not isinstance(image_size, int) or not 8 <= image_size <= 512:
            problems.append(f"image_size must be an integer in [8, 512], got {image_size!r}")
        if not 0.0 <= val_fraction < 1.0:
            problems.append(f"val_fraction must be in [0, 1), got {val_fraction}")
        if not 0.0 <= style_rate <= 1.0:
            problems.append(f"style_rate must be in [0, 1], got {style_rate}")
        if not isinstance(captions_per_image, int) or captions_per_image < 1:
            problems.append(f"captions_per_image must be an integer >= 1, got "
                            f"{captions_per_image!r}")
        if max_items is not None and max_items < 1:
            problems.append(f"max_items must be >= 1 or null, got {max_items}")
        unknown = sorted(set(sha256 or {}) - set(STYLES))
        if unknown:
            problems.append(f"sha256 names unknown style(s) {unknown}; styles: "
                            f"{', '.join(STYLES)}")
        if problems:
            raise DataError("; ".join(problems))
        self.split, self.caption_seed, self.style_rate = split, caption_seed, style_rate
        self.image_size, self.captions_per_image = image_size, captions_per_image
        cache = Path(os.path.expanduser(cache_dir)) if cache_dir else cache_root() / "emoji"
        packages = {s: replace(p, sha256=(sha256 or {}).get(s, p.sha256))
                    for s, p in PACKAGES.items()}

        def archive(style: str) -> Path:
            return fetch_package(packages[style], cache_dir=cache, npm=npm,
                                 archive_dir=archive_dir)

        # The concepts come from emoji.json (the same file in both emoji-datasource packages)
        # and OpenMoji's CLDR names, whichever styles are used, so labels never change.
        source = next((s for s in self.styles if PACKAGES[s].kind == "datasource"), "twemoji")
        loaded = {s: load_style(s, archive(s), size=image_size, cache_dir=cache)
                  for s in dict.fromkeys([source, "openmoji", *self.styles])}
        self.concepts = build_concepts(loaded[source]["meta"], loaded["openmoji"]["meta"])
        index = {c.key: i for i, c in enumerate(self.concepts)}

        rows: list[tuple[int, int, str, int, str | None]] = []  # (concept, order, style, i, tone)
        for style in self.styles:
            part = loaded[style]
            bases = _base_codes(style, part["meta"])
            for i, code in enumerate(part["codes"]):
                base = bases.get(code_key(code))
                if base is None or base not in index:
                    continue
                tone = tone_phrase(code) if code_key(code) != base else None
                if tone is not None and not skin_tones:
                    continue
                concept = index[base]
                if in_split(self.concepts[concept].key, split, val_fraction):
                    rows.append((concept, STYLES.index(style), style, i, tone))
        rows.sort(key=lambda r: (r[0], r[1], r[4] or "", r[3]))
        if max_items is not None:
            rows = rows[: -(-max_items // captions_per_image)]
        if not rows:
            raise DataError(f"the emoji {split} split is empty (styles {list(self.styles)}, "
                            f"val_fraction {val_fraction}, max_items {max_items})")
        pixels = []
        for style in self.styles:
            chosen = [r[3] for r in rows if r[2] == style]
            pixels.append((style, chosen))
        # (n, 3, s, s) uint8 RGB, in the order of ``rows``
        order = {style: {i: k for k, i in enumerate(chosen)} for style, chosen in pixels}
        stacked = {style: composite(loaded[style]["rgba"][chosen], self.background)
                   for style, chosen in pixels if chosen}
        self._pixels = np.stack([stacked[r[2]][order[r[2]][r[3]]] for r in rows])
        self.image_concepts = [r[0] for r in rows]
        self.image_styles = [r[2] for r in rows]
        self.image_tones = [r[4] for r in rows]
        count = len(rows) * captions_per_image
        if max_items is not None:
            count = min(count, max_items)
        self._count = count
        self.labels: list[int] = [self.image_concepts[j // captions_per_image]
                                  for j in range(count)]
        self._captions: list[str] | None = None

    # -- items ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._count

    def image_of(self, index: int) -> int:
        """The image (row of the pixel table) of item ``index``."""
        return index // self.captions_per_image

    @property
    def item_styles(self) -> list[str]:
        """The style of every item."""
        return [self.image_styles[self.image_of(j)] for j in range(len(self))]

    @property
    def tones(self) -> list[str | None]:
        """The skin tone of every item (``None`` where there is none)."""
        return [self.image_tones[self.image_of(j)] for j in range(len(self))]

    def caption(self, index: int) -> str:
        """The caption of item ``index``."""
        image = self.image_of(index)
        rng = caption_rng(self.caption_seed, self.split, index)
        return emoji_caption(self.concepts[self.image_concepts[image]], self.image_styles[image],
                             self.image_tones[image], rng, style_rate=self.style_rate)

    def get_images(self, indices: Sequence[int] | slice | None = None):
        """Images (k, 3, s, s) float in [-1, 1] of ``indices`` (default: all)."""
        items = np.arange(len(self))
        chosen = items if indices is None else items[indices]
        return uint8_to_float(self._pixels[np.asarray(chosen, dtype=np.int64)
                                           // self.captions_per_image])

    @property
    def item_images(self) -> list[int]:
        """The distinct image of every item (items share one under several captions), so the
        image modality encodes each image once (see :meth:`get_distinct_images`)."""
        return [self.image_of(j) for j in range(len(self))]

    def get_distinct_images(self, indices: Sequence[int]):
        """Distinct images (m, 3, s, s) float in [-1, 1] by image index (``item_images``)."""
        return uint8_to_float(self._pixels[np.asarray(indices, dtype=np.int64)])

    def get_pixels(self, indices: Sequence[int] | None = None) -> np.ndarray:
        """Images (k, 3, s, s) uint8 RGB of ``indices`` (default: all)."""
        chosen = np.arange(len(self)) if indices is None else np.asarray(indices, np.int64)
        return self._pixels[chosen // self.captions_per_image]

    # -- evaluation prompts --------------------------------------------------------------------
    def held_out_prompt(self, concept: int, index: int, *, style: str | None = None,
                        tone: str | None = None) -> str:
        """Prompt ``index`` (cycling over :data:`HELD_OUT_TEMPLATES`, phrasings never used in
        training) for concept ``concept``, naming ``style`` and ``tone`` when given."""
        c = self.concepts[concept]
        name = c.name if tone is None else f"{c.name} with {tone} skin tone"
        prompt = HELD_OUT_TEMPLATES[index % len(HELD_OUT_TEMPLATES)].format(n=name,
                                                                           a=_article(name))
        if style is not None:
            prompt = f"{prompt}, {STYLE_PHRASES[check_styles([style])[0]][0]}"
        return prompt

    @property
    def concept_names(self) -> list[str]:
        """The canonical name of every concept, by label."""
        return [c.name for c in self.concepts]

    def split_concepts(self) -> list[int]:
        """The labels of the concepts this split holds, in order."""
        return sorted(set(self.image_concepts))


def _base_codes(style: str, meta: list[dict]) -> dict[str, str]:
    """``{image code: its concept's code}`` (:func:`code_key` form) for the images of a style:
    each base image maps to itself, each skin-tone variant to its base."""
    bases: dict[str, str] = {}
    if PACKAGES[style].kind == "datasource":
        for entry in meta:
            base = code_key(entry["unified"])
            bases[code_key(Path(entry["image"]).stem)] = base
            for variant in (entry.get("skin_variations") or {}).values():
                bases[code_key(Path(variant["image"]).stem)] = base
    else:
        for entry in meta:
            base = entry.get("skintone_base_hexcode") or entry["hexcode"]
            bases[code_key(entry["hexcode"])] = code_key(base)
    return bases


def check_styles(styles: Any) -> tuple[str, ...]:
    """``styles`` as a tuple of known style names.

    Raises:
        DataError: not a non-empty list of names, or an unknown name (with a did-you-mean and
            the accepted names).
    """
    if isinstance(styles, str) or not isinstance(styles, (list, tuple)) or not styles:
        raise DataError(f"styles must be a non-empty list of {', '.join(STYLES)}, got "
                        f"{styles!r}")
    for style in styles:
        if style not in PACKAGES:
            alias = STYLE_ALIASES.get(str(style).lower())
            hint = f" (did you mean '{alias}'?)" if alias else did_you_mean(str(style), STYLES)
            raise DataError(f"unknown emoji style {style!r}{hint}; accepted: "
                            f"{', '.join(STYLES)} (twemoji: Twitter's set, noto: Google's, "
                            "openmoji: OpenMoji)")
    return tuple(dict.fromkeys(styles))
