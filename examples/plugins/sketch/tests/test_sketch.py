"""Tests of the sketch plugin: the conformance kit, tokenizer, datasets, objective and pipeline.

They run with the repository's suite (``python -m pytest``; the plugin is imported from the source
tree when it is not installed), or alone::

    python -m pytest examples/plugins/sketch/tests -q
"""

from __future__ import annotations

import json
from pathlib import Path

import sys

import numpy as np
import pytest
import torch

try:  # installed, or else from the source tree
    import multimodal_sketch
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import multimodal_sketch
from multimodal.errors import (CheckpointError, ConfigError, DataError,
                               DuplicateRegistrationError, InputError)
from multimodal.registry import KINDS, Registry, restored_registries
from multimodal_sketch.data import (SHAPE_KEYWORDS, SHAPES, QuickDrawNdjson, ShapeSketches,
                                    draw_shape)
from multimodal_sketch.head import SKETCH_MODALITY_ID, StrokeHead
from multimodal_sketch.modality import SketchModality, layout
from multimodal_sketch.pipeline import TextToSketchPipeline, render
from multimodal_sketch.tokenizer import StrokeTokenizer

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.fixture(scope="module", autouse=True)
def registries():
    """The global registries with the plugin registered (as its entry point would), restored
    afterwards so other test modules see the core alone."""
    with restored_registries() as registries:
        if "sketch" not in registries["specs"]:
            multimodal_sketch.register(registries)
        yield registries


# -- registration ---------------------------------------------------------------------------------
def test_registers_every_component(registries):
    assert registries["tokenizers"].get("stroke_tokens") is StrokeTokenizer
    assert registries["decoders"].get("stroke_head") is StrokeHead
    assert registries["datasets"].get("shape_sketches") is ShapeSketches
    assert registries["datasets"].get("quickdraw_ndjson") is QuickDrawNdjson
    assert registries["pipelines"].get("text-to-sketch") is TextToSketchPipeline
    assert registries["modalities"].get("sketch") is SketchModality
    assert registries["specs"].get("sketch") is multimodal_sketch.SPEC
    assert multimodal_sketch.SPEC.modality_id == SKETCH_MODALITY_ID == 4


def test_registering_twice_is_a_no_op_and_a_rival_is_refused():
    fresh = {kind: Registry(kind) for kind in KINDS}
    multimodal_sketch.register(fresh)
    multimodal_sketch.register(fresh)  # the same objects again: nothing changes
    assert fresh["decoders"].names() == ["stroke_head"]

    class OtherHead(StrokeHead):
        pass

    rival = {kind: Registry(kind) for kind in KINDS}
    rival["decoders"].register("stroke_head", OtherHead)
    with pytest.raises(DuplicateRegistrationError, match="stroke_head"):
        multimodal_sketch.register(rival)
    assert "sketch" not in rival["specs"]  # a refused spec leaves no trace


def test_entry_point_loads_register():
    import tomllib
    from importlib.metadata import EntryPoint

    from multimodal.registry import PLUGIN_GROUP, load_plugins, plugin_failures

    project = tomllib.loads((CONFIGS.parent / "pyproject.toml").read_text())
    target = project["project"]["entry-points"][PLUGIN_GROUP]["sketch"]
    entry_point = EntryPoint(name="sketch", value=target, group=PLUGIN_GROUP)
    assert entry_point.load() is multimodal_sketch.register
    load_plugins([entry_point])  # what an installed plugin goes through: a no-op here
    assert "sketch" not in plugin_failures


def test_configs_validate():
    from multimodal.config import load_config

    for name in ("sketch_shapes.yaml", "sketch_tiny.yaml"):
        config = load_config(CONFIGS / name)
        assert config["decoders"]["sketch"]["type"] == "stroke_head"
        assert (config["decoders"]["sketch"]["grid_size"]
                == config["tokenizers"]["sketch"]["grid_size"])


# -- the conformance kit --------------------------------------------------------------------------
def test_conformance(registries, tmp_path):
    from multimodal.testing import check_modality

    torch.set_num_threads(1)
    result = check_modality(registries["specs"].get("sketch"), tmp_path)
    assert result["loss_after"] < result["loss_before"]
    assert len(result["encoded_shape"]) == 1
    assert Path(result["file"]).is_file()


# -- tokenizer ------------------------------------------------------------------------------------
@pytest.mark.parametrize("grid", [8, 32])
def test_round_trip_within_a_cell(grid):
    tok = StrokeTokenizer(grid_size=grid)
    rng = np.random.default_rng(0)
    cells = rng.choice(grid * grid, size=12, replace=False)  # distinct cells: no point dropped
    xy = (np.stack([cells % grid, cells // grid], 1) + rng.uniform(0.01, 0.99, (12, 2))) / grid
    lift = np.zeros((12, 1))
    lift[[3, 7, 11]] = 1  # three strokes
    strokes = torch.tensor(np.concatenate([xy, lift], 1), dtype=torch.float32)
    ids = tok.encode(strokes)
    assert ids.dtype == torch.long and ids.ndim == 1
    assert ids[0] == tok.new_stroke_id and ids[-1] == tok.end_id
    assert int((ids == tok.new_stroke_id).sum()) == 3
    back = tok.decode(ids)
    assert back.shape == (12, 3) and back.dtype == torch.float32
    assert torch.all((back[:, :2] - strokes[:, :2]).abs() <= 0.5 / grid + 1e-6)
    assert torch.equal(back[:, 2], strokes[:, 2])


def test_repeated_cells_are_dropped_and_edges_clamped():
    tok = StrokeTokenizer(grid_size=4)
    strokes = [[0.10, 0.10, 0], [0.12, 0.11, 0], [0.9, 0.1, 0], [1.0, 1.0, 1], [-0.2, 0.5, 1]]
    ids = tok.encode(strokes).tolist()
    assert ids == [tok.new_stroke_id, 0, 3, 15, tok.new_stroke_id, 8, tok.end_id]
    assert tok.decode(ids).shape == (4, 3)
    assert tok.encode(torch.zeros(0, 3)).tolist() == [tok.end_id]
    assert tok.decode([tok.end_id]).shape == (0, 3)
    assert tok.decode([tok.pad_id, 5, tok.end_id, 6]).shape == (1, 3)  # PAD skipped, END stops


def test_tokenizer_errors_and_save_load(tmp_path):
    tok = StrokeTokenizer(grid_size=8)
    assert tok.vocab_size == 67 and tok.is_trained and tok.fit([]) is tok
    with pytest.raises(DataError, match=r"\(n, 3\)"):
        tok.encode(torch.zeros(5, 2))
    with pytest.raises(DataError, match="NaN"):
        tok.encode([[float("nan"), 0.0, 1.0]])
    with pytest.raises(InputError, match="outside the stroke vocabulary"):
        tok.decode([67])
    with pytest.raises(ValueError, match="grid_size"):
        StrokeTokenizer(grid_size=1)
    tok.save(tmp_path)
    assert StrokeTokenizer.load(tmp_path, grid_size=8).grid_size == 8
    with pytest.raises(CheckpointError, match="grid_size 16"):
        StrokeTokenizer.load(tmp_path, grid_size=16)
    with pytest.raises(CheckpointError, match="not found"):
        StrokeTokenizer.load(tmp_path / "missing")


# -- datasets -------------------------------------------------------------------------------------
def test_shape_sketches_are_deterministic_per_seed_split_and_index():
    a = ShapeSketches(num_sketches=40, val_sketches=8, seed=3)
    b = ShapeSketches(num_sketches=60, seed=3)  # more items: the first 40 are the same
    for x, y in zip(a, b):
        assert torch.equal(x["strokes"], y["strokes"]) and x["caption"] == y["caption"]
    other_seed = ShapeSketches(num_sketches=40, seed=4)
    assert not torch.equal(a[0]["strokes"], other_seed[0]["strokes"])
    val = ShapeSketches(split="val", num_sketches=40, val_sketches=8, seed=3)
    assert len(val) == 8 and not torch.equal(val[0]["strokes"], a[0]["strokes"])


def test_shape_sketches_draw_what_the_caption_says():
    data = ShapeSketches(num_sketches=400, seed=0)
    assert sorted({item["label"] for item in data}) == list(range(len(SHAPES)))
    for item in data:
        strokes, caption, shape = item["strokes"], item["caption"], SHAPES[item["label"]]
        assert strokes.dtype == torch.float32 and strokes.ndim == 2 and strokes.shape[1] == 3
        assert float(strokes[:, :2].min()) >= 0 and float(strokes[:, :2].max()) <= 1
        assert float(strokes[-1, 2]) == 1.0
        named = [s for s, words in SHAPE_KEYWORDS.items() if any(w in caption for w in words)]
        assert named == [shape], caption
        mid = (strokes[:, :2].min(0).values + strokes[:, :2].max(0).values) / 2
        extent = float((strokes[:, :2].max(0).values - strokes[:, :2].min(0).values).max())
        if "left" in caption:
            assert mid[0] < 0.5, caption
        if "right" in caption:
            assert mid[0] > 0.5, caption
        if "top" in caption:
            assert mid[1] < 0.5, caption
        if "bottom" in caption:
            assert mid[1] > 0.5, caption
        if any(w in caption for w in ("big", "large")):
            assert extent > 0.3, caption
        if any(w in caption.split() for w in ("small", "little", "tiny")):
            assert extent < 0.42, caption
    strokes_per_shape = {SHAPES[i["label"]]: int(i["strokes"][:, 2].sum()) for i in data}
    assert strokes_per_shape["cross"] == 2 and strokes_per_shape["circle"] == 1


def test_shape_sketches_options():
    only = ShapeSketches(num_sketches=6, shapes=["star", "house"])
    assert [i["label"] for i in only] == [0, 1, 0, 1, 0, 1]
    assert all("star" in only[i]["caption"] for i in (0, 2, 4))
    with pytest.raises(ValueError, match="did you mean 'circle'"):
        ShapeSketches(shapes=["cirle"])
    with pytest.raises(DataError, match="split"):
        ShapeSketches(split="test")
    strokes, caption = draw_shape("spiral", np.random.default_rng(1), jitter=0.0)
    assert "spiral" in caption and strokes.shape[0] > 10


def _quickdraw_file(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n"
                            for line in lines))
    return path


def _drawing(word: str, key: int, recognized: bool = True) -> dict:
    return {"word": word, "key_id": str(key), "recognized": recognized, "countrycode": "DE",
            "drawing": [[[0, 128, 255], [0, 255, 128]], [[10, 20], [30, 40]]]}


def test_quickdraw_reader(tmp_path):
    lines = [_drawing("cat" if i % 2 else "dog", i, recognized=i % 3 != 0) for i in range(40)]
    file = _quickdraw_file(tmp_path / "drawings.ndjson", lines + [""])  # a blank line is skipped
    train = QuickDrawNdjson(path=str(file), val_fraction=0.25)
    val = QuickDrawNdjson(path=str(file), split="val", val_fraction=0.25)
    assert len(train) + len(val) == 40 and len(val) > 0
    item = train[0]
    assert item["caption"] in ("cat", "dog") and train.words == ["cat", "dog"]
    assert item["label"] == train.words.index(item["caption"])
    expected = torch.tensor([[0, 0, 0], [128 / 255, 1, 0], [1, 128 / 255, 1],
                             [10 / 255, 30 / 255, 0], [20 / 255, 40 / 255, 1]])
    assert torch.allclose(item["strokes"], expected)
    cats = QuickDrawNdjson(path=[str(tmp_path / "*.ndjson")], words=["cat"], val_fraction=0,
                           recognized_only=True, max_items=5)
    assert len(cats) == 5 and {i["caption"] for i in cats} == {"cat"}
    # a reader's sketch encodes like a generated one
    assert StrokeTokenizer().encode(item["strokes"])[-1] == StrokeTokenizer().end_id


@pytest.mark.parametrize("bad, message", [
    ("{not json", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    ({"drawing": [[[1], [2]]]}, "'word' must be a non-empty string"),
    ({"word": "cat"}, "'drawing' must be a non-empty list"),
    ({"word": "cat", "drawing": [[[1, 2], [3]]]}, "stroke 0 has 2 x and 1 y"),
    ({"word": "cat", "drawing": [[[1, 2], [3, 300]]]}, "outside 0..255"),
    ({"word": "cat", "drawing": [[[1, "a"], [3, 4]]]}, "not numbers"),
    ({"word": "cat", "drawing": [[1, 2]]}, r"stroke 0 must be \[\[x...\], \[y...\]\]"),
])
def test_quickdraw_errors_name_file_line_and_format(tmp_path, bad, message):
    file = _quickdraw_file(tmp_path / "bad.ndjson", [_drawing("cat", 1), bad])
    with pytest.raises(DataError, match=message) as info:
        QuickDrawNdjson(path=str(file), val_fraction=0)
    message = str(info.value)
    assert f"{file}:2" in message and "accepted: one JSON object per line" in message


def test_quickdraw_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="Quick, Draw! file not found: .*nowhere.ndjson"):
        QuickDrawNdjson(path=str(tmp_path / "nowhere.ndjson"))
    empty = _quickdraw_file(tmp_path / "empty.ndjson", [])
    with pytest.raises(DataError, match="no train drawings"):
        QuickDrawNdjson(path=str(empty))


# -- objective ------------------------------------------------------------------------------------
def test_layout_joins_caption_and_strokes():
    text, strokes, is_stroke = layout(
        torch.tensor([[7, 8, 9], [7, 0, 0]]), torch.tensor([3, 1]),
        torch.tensor([[50, 51, 52], [50, 53, 99]]), torch.tensor([3, 2]), stroke_pad=99)
    assert is_stroke.tolist() == [[False, False, False, True, True, True],
                                  [False, True, True, True, True, True]]
    assert text[0, :3].tolist() == [7, 8, 9] and text[1, 0] == 7
    assert strokes.tolist() == [[99, 99, 99, 50, 51, 52], [99, 50, 53, 99, 99, 99]]


@pytest.fixture(scope="module")
def tiny_parts():
    """Untrained tiny parts: text tokenizer, stroke tokenizer (16 grid), backbone, head."""
    from multimodal.testing import tiny_backbone, tiny_tokenizer

    torch.manual_seed(0)
    backbone = tiny_backbone(max_seq_len=128).eval()
    head = StrokeHead(backbone=backbone, grid_size=16, max_tokens=32).eval()
    return tiny_tokenizer(), StrokeTokenizer(grid_size=16), backbone, head


def test_loss_counts_stroke_tokens_only_and_sampling_is_seeded(tiny_parts):
    text, strokes_tok, backbone, head = tiny_parts
    modality = SketchModality()
    data = ShapeSketches(num_sketches=16)
    prepared = modality.prepare(data, {"text": text, "sketch": strokes_tok}, seq_len=96)
    assert len(prepared) == 16
    batch = next(modality.eval_batches(prepared, batch_size=4, max_batches=1))
    with torch.no_grad():
        loss, info = modality.loss(backbone, head, batch)
    assert info["tokens"] == float(prepared.stroke_len[:4].sum())
    assert abs(float(loss) - np.log(head.vocab_size)) < 0.5  # untrained: near uniform
    one = modality.sample(prepared, batch_size=4, generator=torch.Generator().manual_seed(1))
    two = modality.sample(prepared, batch_size=4, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(one[k], two[k]) for k in one if torch.is_tensor(one[k]))
    assert list(modality.text_corpus(data)) == data.captions
    wrong = StrokeHead(backbone=backbone, grid_size=8, max_tokens=32)
    with pytest.raises(ConfigError, match="grid"):
        modality.loss(backbone, wrong, batch)
    with pytest.raises(DataError, match="tokenizers.sketch"):
        modality.prepare(data, {"text": text}, seq_len=96)
    with pytest.warns(UserWarning, match="left out"):
        short = modality.prepare(data, {"text": text, "sketch": strokes_tok}, seq_len=16)
    assert 0 < len(short) < 16


# -- pipeline -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipe(tiny_parts):
    text, strokes_tok, backbone, head = tiny_parts
    return TextToSketchPipeline(backbone=backbone, decoder=head, tokenizer=text,
                                stroke_tokenizer=strokes_tok, checkpoint_id="tiny")


@pytest.mark.parametrize("kwargs, message", [
    ({"prompt": 3}, "prompt must be a string"),
    ({"num_samples": 0}, "num_samples must be an integer >= 1"),
    ({"num_samples": 1.5}, "num_samples must be an integer >= 1"),
    ({"temperature": 0}, "temperature must be a number > 0"),
    ({"temperature": -1.0}, "temperature must be a number > 0"),
    ({"top_k": 0}, "top_k must be a positive integer"),
    ({"max_tokens": 0}, r"max_tokens must be an integer in 1..127"),
    ({"max_tokens": 500}, r"max_tokens must be an integer in 1..127"),
    ({"seed": "x"}, "seed must be an integer"),
])
def test_pipeline_input_errors(pipe, kwargs, message):
    kwargs = dict(kwargs)
    prompt = kwargs.pop("prompt", "a star")
    with pytest.raises(InputError, match=message):
        pipe(prompt, **kwargs)


def test_pipeline_samples_legal_seeded_sketches(pipe):
    first = pipe("a big star", num_samples=3, seed=5, max_tokens=20)
    second = pipe("a big star", num_samples=3, seed=5, max_tokens=20)
    assert first.token_ids == second.token_ids
    assert all(np.array_equal(a, b) for a, b in zip(first.sketches, second.sketches))
    head = pipe.decoder
    for ids, sketch in zip(first.token_ids, first.sketches):
        assert ids[0] == head.new_stroke_id and head.pad_id not in ids and len(ids) <= 20
        assert all(a != b for a, b in zip(ids, ids[1:]) if a < head.num_cells)
        assert all(b < head.num_cells for a, b in zip(ids, ids[1:]) if a == head.new_stroke_id)
        assert sketch.ndim == 2 and sketch.shape[1] == 3 and sketch.dtype == np.float32
    assert first.seed == 5 and first.metadata(0)["prompt"] == "a big star"
    assert pipe("", seed=1, max_tokens=4, top_k=5).max_tokens == 4


def test_pipeline_grid_mismatch(tiny_parts):
    text, _, backbone, head = tiny_parts
    with pytest.raises(CheckpointError, match="grid"):
        TextToSketchPipeline(backbone=backbone, decoder=head, tokenizer=text,
                             stroke_tokenizer=StrokeTokenizer(grid_size=32))


def test_outputs_are_written_as_png_and_json(pipe, tmp_path):
    from multimodal.modalities.image.files import read_png_metadata
    from multimodal.outputs import write_outputs

    result = pipe("a spiral", num_samples=2, seed=3, max_tokens=16, size=48)
    written = write_outputs(result, tmp_path / "out", produces=pipe.produces)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["000.json", "000.png", "001.json", "001.png"]
    assert [p.name for p in written] == ["000.png", "000.json", "001.png", "001.json"]
    meta = read_png_metadata(tmp_path / "out" / "000.png")
    assert meta["prompt"] == "a spiral" and meta["seed"] == 3 and meta["checkpoint_id"] == "tiny"
    assert meta["size"] == 48
    record = json.loads((tmp_path / "out" / "001.json").read_text())
    assert record["sample"] == 1 and np.asarray(record["strokes"]).reshape(-1, 3).shape[1] == 3
    from PIL import Image

    assert Image.open(tmp_path / "out" / "000.png").size == (48, 48)
    with pytest.raises(InputError, match="size must be from 8 to 4096"):
        pipe("a spiral", size=4)


def test_cli_options_come_from_the_signature():
    from multimodal.cli import task_options

    options = {o.dest: o for o in task_options(TextToSketchPipeline, "text-to-sketch")}
    assert list(options) == ["prompt", "num_samples", "temperature", "top_k", "seed",
                             "max_tokens", "size"]
    assert options["size"].flags == ("--size",) and options["size"].kwargs["default"] == 128
    assert options["top_k"].kwargs["type"] is int
    assert options["size"].kwargs["help"].startswith("Side in pixels of the PNG")


def test_render():
    image = render(torch.tensor([[0.1, 0.1, 0], [0.9, 0.9, 1], [0.5, 0.2, 1]]), size=32)
    assert image.shape == (32, 32) and image.dtype == np.uint8
    assert image[3, 3] == 255 and image[27:29, 27:29].max() == 255
    assert image[4:9, 13:19].max() == 255  # the one-point stroke is a dot
    assert image[28, 3] == 0
    assert render(np.zeros((0, 3)), 16).max() == 0
    with pytest.raises(InputError, match=r"\(n, 3\)"):
        render(np.zeros((4, 2)))
    with pytest.raises(InputError, match="size"):
        render(np.zeros((1, 3)), size=2)


# -- checkpoints, replay and moderation -----------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A checkpoint of the spec's tiny model, untrained (built and saved in milliseconds)."""
    from multimodal.builders import build_model
    from multimodal.testing import tiny_tokenizer
    from multimodal.checkpoint import save_checkpoint

    config = multimodal_sketch.SPEC.tiny_config()
    tokenizers = {"text": tiny_tokenizer(), "sketch": StrokeTokenizer(grid_size=16)}
    torch.manual_seed(0)
    model = build_model(config, tokenizers)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "step_000000", model=model,
                           config=config, tokenizers=tokenizers)


def test_replay_regenerates_a_png(tiny_checkpoint, tmp_path):
    from multimodal.pipelines import load_pipeline
    from multimodal.replay import replay

    pipe = load_pipeline("text-to-sketch", tiny_checkpoint)
    assert pipe.stroke_tokenizer.grid_size == 16 and pipe.decoder.max_tokens == 64
    from multimodal.outputs import write_outputs

    result = pipe("a house on the left", num_samples=2, temperature=0.9, top_k=50, seed=11,
                  max_tokens=20, size=40)
    write_outputs(result, tmp_path / "first", produces=pipe.produces)
    result = replay(tmp_path / "first" / "001.png", checkpoint=str(tiny_checkpoint),
                    out=tmp_path / "again")
    assert result["identical"], result
    assert (tmp_path / "again" / "001.json").is_file()


def test_blocked_prompt_generates_nothing(pipe, tiny_checkpoint, tmp_path):
    from multimodal.safety import DEFAULT_BLOCKLIST, PromptBlockedError, read_blocklist

    term = next(t for t in read_blocklist(str(DEFAULT_BLOCKLIST)) if not t.endswith("*"))
    with pytest.raises(PromptBlockedError, match="text-to-sketch"):
        pipe(f"a {term} house", seed=0)
    from multimodal.cli import main

    assert main(["generate", "text-to-sketch", "--checkpoint", str(tiny_checkpoint),
                 "--prompt", term, "--seed", "0",
                 "--max-tokens", "8", "--size", "32", "--out", str(tmp_path / "blocked")]) == 3
    assert not (tmp_path / "blocked").exists()
