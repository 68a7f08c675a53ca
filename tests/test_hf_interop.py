"""Hugging Face formats in and out (docs/design.md, "Hugging Face folders").

Tiny random models written with transformers/diffusers ``save_pretrained`` stand in for
pretrained folders. In: a transformers causal LM as the shared backbone (its logits, its KV
cache, its tokenizer), a diffusers AutoencoderKL as the image tokenizer, a few training steps and
text generation on them. Out: ``export_hf`` / ``multimodal export --format hf`` round trips (our
model -> HF folder -> transformers / diffusers / peft -> the same logits, ids and latents). And
the bad input: folders that are not models, an encoder as backbone, a VAE for other channels,
a LoRA export without LoRA, an output folder that is not empty.

Axes: b batch, n tokens, v vocabulary, c channels, h w image side, l latent channels.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import requires_fashion_mnist
from multimodal.builders import build_component
from multimodal.errors import CheckpointError, ConfigError, DataError, InputError
from multimodal.testing import tiny_config, tiny_diffusers_vae, tiny_hf_causal_lm, tiny_tokenizer

# Differences of two float32 computations of the same function (transformers' own Llama against
# ours, or the same model read back): well below any logit that matters.
LOGITS_ATOL = 1e-4
LATENTS_ATOL = 1e-5
TEXT = "The only way to get rid of a temptation is to yield to it."


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {"llama": tiny_hf_causal_lm(root / "llama"),
            "gpt2": tiny_hf_causal_lm(root / "gpt2", architecture="gpt2"),
            "vae": tiny_diffusers_vae(root / "vae"),
            "root": root}


def _backbone(path, **kwargs):
    return build_component("backbones", {"type": "hf_causal_lm", "path": str(path), **kwargs},
                           "backbone", vocab_size=tiny_tokenizer().vocab_size)


def _ids(tok) -> torch.Tensor:
    return torch.tensor([[tok.eos_id] + tok.encode(TEXT)])  # (1, n)


def _text_files(tmp_path) -> dict:
    from multimodal.testing import tiny_text_files

    return {"text": {"type": "text_files", "paths": tiny_text_files(tmp_path / "docs")}}


def _hf_config(folder, tmp_path, **train) -> dict:
    """tiny_config with the HF folder as backbone and text tokenizer."""
    return tiny_config(tokenizers={"text": {"type": "hf_tokenizer", "path": str(folder)}},
                       backbone={"type": "hf_causal_lm", "path": str(folder)},
                       data=_text_files(tmp_path),
                       train={"max_steps": 4, "checkpoint_every": 4, "eval_every": 4, **train})


# -- in: a transformers causal LM as the backbone ------------------------------------------------
@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_hf_backbone_gives_the_models_logits_and_caches_like_it(folders, architecture):
    from transformers import AutoModelForCausalLM

    from multimodal.modalities.text.head import LMHead

    backbone = _backbone(folders[architecture]).eval()
    head = LMHead(backbone=backbone)
    reference = AutoModelForCausalLM.from_pretrained(folders[architecture],
                                                     local_files_only=True).eval()
    ids = _ids(tiny_tokenizer())
    with torch.no_grad():
        ours = head(backbone(ids))  # (1, n, v)
        theirs = reference(input_ids=ids).logits
        assert (ours - theirs).abs().max() <= LOGITS_ATOL
        # KV-cached decoding, a prefix then one token at a time, equals the full forward
        cache = backbone.new_kv_cache(1, ids.shape[1])
        steps = [head(backbone(ids[:, :5], kv_cache=cache))]
        steps += [head(backbone(ids[:, i : i + 1], kv_cache=cache))
                  for i in range(5, ids.shape[1])]
        assert cache.pos == ids.shape[1]
        assert (torch.cat(steps, dim=1) - ours).abs().max() <= LOGITS_ATOL
        with pytest.raises(ValueError, match="max_seq_len"):
            backbone(ids[:, :1], kv_cache=cache)
    assert backbone.dim == 32 and backbone.max_seq_len == 128
    assert head.weight is backbone.model.get_output_embeddings().weight  # the model's own head
    tied = head.weight.data_ptr() == backbone.tok_embeddings.weight.data_ptr()
    assert tied == (architecture == "gpt2")  # GPT-2 ties its head; this Llama does not


def test_other_modalities_enter_through_inputs_embeds_and_text_row_stays_zero(folders):
    backbone = _backbone(folders["llama"])
    ids = _ids(tiny_tokenizer())[:, :6]
    embeds = backbone.embed(ids)
    with torch.no_grad():
        backbone.modality_embeddings.weight[1].fill_(0.5)
        text = backbone(inputs_embeds=embeds, modality_ids=0)
        assert torch.equal(text, backbone(ids))
        image = backbone(inputs_embeds=embeds, modality_ids=1)
        assert (image - text).abs().max() > 1e-3  # the image row changes what it reads
    mixed = torch.tensor([[1, 1, 0, 0, 0, 0]])
    backbone(inputs_embeds=embeds.detach(), modality_ids=mixed).sum().backward()
    grad = backbone.modality_embeddings.weight.grad
    assert grad[0].abs().max() == 0 and grad[1].abs().max() > 0


def test_hf_tokenizer_encodes_like_autotokenizer_and_loads_its_copy(folders, tmp_path):
    from transformers import AutoTokenizer

    from multimodal.modalities.text.hf_tokenizer import HFTokenizer

    tok = HFTokenizer(path=str(folders["llama"]))
    reference = AutoTokenizer.from_pretrained(folders["llama"], local_files_only=True)
    assert tok.encode(TEXT) == reference.encode(TEXT, add_special_tokens=False) \
        == tiny_tokenizer().encode(TEXT)
    assert tok.encode("<|endoftext|>") == tiny_tokenizer().encode("<|endoftext|>")  # as text
    assert tok.eos_id == tiny_tokenizer().eos_id and tok.vocab_size == tiny_tokenizer().vocab_size
    assert sum(tok.token_byte_lengths()[i] for i in tok.encode(TEXT)) == len(TEXT.encode())
    tok.save(tmp_path)
    assert HFTokenizer.load(tmp_path, path="/gone").encode(TEXT) == tok.encode(TEXT)


def test_train_on_an_hf_llama_folder_then_generate_without_it(folders, tmp_path):
    """A few training steps on the HF Llama folder, then text generation from the checkpoint
    after the folder is gone; greedy decoding equals transformers' greedy generate of the
    exported model."""
    import shutil

    from transformers import AutoModelForCausalLM

    from multimodal.cli import main
    from multimodal.pipelines import load_pipeline
    from multimodal.training.trainer import train

    source = folders["root"] / "llama_copy"
    shutil.copytree(folders["llama"], source)
    before = AutoModelForCausalLM.from_pretrained(source, local_files_only=True)
    config = _hf_config(source, tmp_path)
    result = train(config, out_dir=tmp_path / "run", progress=False)
    assert (Path(result["checkpoint"]) / "backbone" / "config.json").is_file()
    shutil.rmtree(source)  # the checkpoint holds everything it needs: to resume, to generate
    longer = dict(config, train={**config["train"], "max_steps": 6})
    result = train(longer, out_dir=tmp_path / "run", resume=True, allow_changes=["max_steps"],
                   progress=False, memory=10**9)  # (--memory: the plan must be made too)
    checkpoint = Path(result["checkpoint"])
    assert result["step"] == 6

    pipe = load_pipeline("text-generation", checkpoint)
    trained = pipe.backbone.model.state_dict()
    changed = [k for k, v in before.state_dict().items() if not torch.equal(v, trained[k])]
    assert len(changed) > 10  # the backbone trained
    output = pipe("The only way", max_new_tokens=12, do_sample=False, stop_at_eos=False)
    assert len(output.token_ids[0]) == 12 and output.texts[0]

    out = tmp_path / "hf"
    assert main(["export", str(checkpoint), str(out), "--format", "hf"]) == 0
    exported = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    prompt = torch.tensor([pipe.encode_prompt("The only way", 12)])
    generated = exported.generate(prompt, max_new_tokens=12, do_sample=False,
                                  eos_token_id=None, pad_token_id=pipe.tokenizer.pad_id)
    assert generated[0, prompt.shape[1]:].tolist() == output.token_ids[0]


def test_a_tied_head_trains_saves_and_stays_tied(folders, tmp_path):
    """GPT-2 ties its head to its token embedding: the state_dict names one tensor twice,
    which safetensors refuses to write shared (the first checkpoint crashed, losing the run).
    Each name is written, and the loaded model is tied again."""
    from transformers import AutoModelForCausalLM

    from multimodal.checkpoint import load_checkpoint
    from multimodal.training.trainer import train

    result = train(_hf_config(folders["gpt2"], tmp_path), out_dir=tmp_path / "run",
                   progress=False)
    hf = load_checkpoint(result["checkpoint"]).model.backbone.model
    assert hf.lm_head.weight.data_ptr() == hf.get_input_embeddings().weight.data_ptr()
    before = AutoModelForCausalLM.from_pretrained(folders["gpt2"], local_files_only=True)
    assert not torch.equal(hf.lm_head.weight, before.lm_head.weight)  # it trained


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_the_memory_plan_of_an_hf_backbone_is_within_30_percent_of_the_measured_peak(
        folders, tmp_path, architecture):
    """The plan builds the model on the meta device, where from_pretrained refuses to run and
    transformers cannot read position values; it now plans HF backbones like our own (the
    measurement as in tests/test_fsdp.py)."""
    from multimodal.training.plan import memory_plan, peak_allocated
    from multimodal.training.trainer import Trainer

    config = _hf_config(folders[architecture], tmp_path, batch_size=8, max_steps=2)
    plan = memory_plan(config)
    trainer = Trainer(config, out_dir=tmp_path / "run", progress=False)
    assert trainer.plan is not None  # the start-up check planned it too
    weights = sum(p.numel() * p.element_size() for p in trainer.model.parameters())
    _, peak = peak_allocated(lambda: [trainer.train_step() for _ in range(2)])
    trainer.close()
    measured = weights + peak
    assert plan.params == weights and not plan.not_estimated
    assert abs(plan.total - measured) / measured < 0.30, (plan.format(), measured)


# -- out: our checkpoint as Hugging Face folders -------------------------------------------------
@pytest.mark.parametrize("variant", ["tied", "gqa_untied"])
def test_export_builtin_backbone_loads_in_transformers_with_the_same_logits(tmp_path, variant):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from multimodal.checkpoint import load_checkpoint
    from multimodal.interop import export_hf
    from multimodal.training.trainer import train

    overrides = {} if variant == "tied" else {
        "backbone": {"num_kv_heads": 2}, "decoders": {"text": {"type": "lm_head",
                                                                "tie_weights": False}}}
    config = tiny_config(data=_text_files(tmp_path), train={"max_steps": 3}, **overrides)
    checkpoint = train(config, out_dir=tmp_path / "run", progress=False)["checkpoint"]
    loaded = load_checkpoint(checkpoint)
    backbone, head, tok = loaded.model.backbone, loaded.model.decoders["text"], \
        loaded.tokenizers["text"]
    assert backbone.modality_embeddings.weight[0].abs().max() > 0  # trained: folded on export

    report = export_hf(checkpoint, tmp_path / "hf")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    assert type(model).__name__ == "LlamaForCausalLM"
    ids = _ids(tok)
    with torch.no_grad():
        diff = (head(backbone(ids)) - model(input_ids=ids).logits).abs().max()
    assert diff <= LOGITS_ATOL, diff  # measured: about 1e-6
    assert report.measured["max |logits difference|"] <= LOGITS_ATOL
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    for text in (TEXT, "Ünïcödé, emoji 🙂, tabs\tand\nnewlines"):
        assert hf_tok.encode(text, add_special_tokens=False) == tok.encode(text)
    assert hf_tok.eos_token_id == tok.eos_id
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "max |logits difference|" in card and "text_files" in card
    assert "## Config" in card and "loss" in card  # a figure the run recorded


def test_export_refuses_an_output_folder_that_is_not_empty(tmp_path, folders):
    from multimodal.cli import main
    from multimodal.interop import export_hf

    checkpoint = _vae_checkpoint(tmp_path, folders)
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(InputError, match="not empty"):
        export_hf(checkpoint, out)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert main(["export", str(checkpoint), str(out), "--format", "hf"]) == 2
    assert not list(tmp_path.glob(".taken.tmp-*"))
    a_file = tmp_path / "model.safetensors"
    a_file.write_bytes(b"mine")
    with pytest.raises(InputError, match="is a file; give a folder that does not exist"):
        export_hf(checkpoint, a_file)
    for format_ in ("hf", "multimodal"):
        assert main(["export", str(checkpoint), str(a_file), "--format", format_]) == 2
    assert a_file.read_bytes() == b"mine"
    (out / "mine.txt").unlink()  # an empty folder is taken
    export_hf(checkpoint, out)
    assert (out / "vae" / "config.json").is_file()


def test_a_failed_export_leaves_nothing(tmp_path, folders, monkeypatch):
    from multimodal.interop import hf_export

    checkpoint = _vae_checkpoint(tmp_path, folders)

    def broken(*args, **kwargs):
        raise CheckpointError("simulated failure half-way")

    monkeypatch.setattr(hf_export, "model_card", broken)
    with pytest.raises(CheckpointError, match="half-way"):
        hf_export.export_hf(checkpoint, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_lora_exports_as_a_peft_adapter_and_merged(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from multimodal.checkpoint import load_checkpoint
    from multimodal.interop import export_hf
    from multimodal.training.trainer import train

    base = train(tiny_config(data=_text_files(tmp_path), train={"max_steps": 2}),
                 out_dir=tmp_path / "base", progress=False)["checkpoint"]
    with pytest.raises(InputError, match="no LoRA adapters"):
        export_hf(base, tmp_path / "nolora", lora=True)
    assert not (tmp_path / "nolora").exists()

    config = tiny_config(data=_text_files(tmp_path), init_from=str(base),
                         train={"max_steps": 3, "lr": 3e-2,
                                "lora": {"rank": 4, "alpha": 8}})
    checkpoint = train(config, out_dir=tmp_path / "lora", progress=False)["checkpoint"]
    loaded = load_checkpoint(checkpoint)
    b = loaded.model.backbone.blocks[0].attn.qkv.lora_B["default"].weight
    assert b.abs().max() > 0  # the adapters trained, so they change the logits
    ids = _ids(loaded.tokenizers["text"])
    with torch.no_grad():
        ours = loaded.model.decoders["text"](loaded.model.backbone(ids))

    export_hf(checkpoint, tmp_path / "adapter", lora=True)
    config_json = json.loads((tmp_path / "adapter" / "lora" / "adapter_config.json").read_text())
    assert config_json["r"] == 4 and config_json["peft_type"] == "LORA"
    base_model = AutoModelForCausalLM.from_pretrained(tmp_path / "adapter", local_files_only=True)
    with torch.no_grad():
        base_logits = base_model(input_ids=ids).logits
        adapted = PeftModel.from_pretrained(base_model, tmp_path / "adapter" / "lora").eval()
        diff = (adapted(input_ids=ids).logits - ours).abs().max()
    assert (base_logits - ours).abs().max() > 1e-3  # the base alone is not the adapted model
    assert diff <= LOGITS_ATOL, diff

    export_hf(checkpoint, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", local_files_only=True)
    with torch.no_grad():
        assert (merged.eval()(input_ids=ids).logits - ours).abs().max() <= LOGITS_ATOL
    assert not (tmp_path / "merged" / "lora").exists()


# -- the image VAE: in from diffusers, out to diffusers ------------------------------------------
def test_diffusers_vae_tokenizer_uses_the_folders_latents(folders, tmp_path):
    from diffusers import AutoencoderKL

    from multimodal.modalities.image.diffusers_vae import DiffusersVAETokenizer

    tok = DiffusersVAETokenizer(path=str(folders["vae"]))
    assert tok.is_trained and tok.latent_shape == (4, 4, 4)
    images = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    reference = AutoencoderKL.from_pretrained(folders["vae"], local_files_only=True)
    with torch.no_grad():
        expected = (reference.encode(images).latent_dist.mean - 0.1) * 0.7
    latents = tok.encode(images)
    assert (latents - expected).abs().max() <= LATENTS_ATOL
    assert tok.decode(latents).shape == images.shape
    tok.save(tmp_path)
    again = DiffusersVAETokenizer.load(tmp_path, path="/gone", image_size=32)
    assert torch.equal(again.encode(images), latents)

    with pytest.raises(DataError, match=r"\(1, 32, 32\).*\(3, 32, 32\)"):
        tok.encode(torch.zeros(2, 3, 32, 32))  # RGB data for a grayscale VAE

    class Images:  # a dataset of 8 images
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return {"image": images[i % 3]}

    tuned = DiffusersVAETokenizer(path=str(folders["vae"]), fit_steps=2, batch_size=2)
    assert not tuned.is_trained
    tuned.fit(Images(), progress=False)
    assert tuned.is_trained and tuned.scaling_factor == pytest.approx(0.7)
    assert not torch.equal(tuned.encode(images), latents)  # fine-tuned


def _vae_checkpoint(tmp_path, folders) -> Path:
    """A checkpoint of a text model with the diffusers VAE folder as its image tokenizer
    (frozen: it needs no image data)."""
    from multimodal.training.trainer import train

    config = tiny_config(data=_text_files(tmp_path), train={"max_steps": 1},
                         tokenizers={"image": {"type": "diffusers_vae",
                                               "path": str(folders["vae"]),
                                               "image_size": 32}})
    return Path(train(config, out_dir=tmp_path / "vae_run", progress=False)["checkpoint"])


def test_export_writes_the_image_vae_as_a_diffusers_folder(tmp_path, folders):
    from diffusers import AutoencoderKL

    from multimodal.checkpoint import load_checkpoint
    from multimodal.interop import export_hf

    checkpoint = _vae_checkpoint(tmp_path, folders)
    report = export_hf(checkpoint, tmp_path / "hf")
    tok = load_checkpoint(checkpoint).tokenizers["image"]
    vae = AutoencoderKL.from_pretrained(tmp_path / "hf", subfolder="vae", local_files_only=True)
    images = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        theirs = (vae.encode(images).latent_dist.mean - vae.config.shift_factor) \
            * vae.config.scaling_factor
    assert (theirs - tok.encode(images)).abs().max() <= LATENTS_ATOL
    assert report.measured["max |latents difference| (vae)"] <= LATENTS_ATOL
    assert {"text", "vae"} <= set(report.parts)


@requires_fashion_mnist
def test_export_our_trained_image_vae(tmp_path):
    """Our own fitted image_vae (measured shift and scale) -> diffusers: the same latents."""
    from diffusers import AutoencoderKL

    from multimodal.checkpoint import load_checkpoint
    from multimodal.interop import export_hf
    from multimodal.testing import tiny_image_config
    from multimodal.training.trainer import train

    checkpoint = train(tiny_image_config(train={"max_steps": 1}), out_dir=tmp_path / "run",
                       progress=False)["checkpoint"]
    loaded = load_checkpoint(checkpoint)
    tok = loaded.tokenizers["image"]
    assert tok.shift_factor != 0 and tok.scaling_factor != 1  # measured when fitted
    report = export_hf(checkpoint, tmp_path / "hf")
    # our latent_unet is a diffusers UNet: it goes too, checked against the decoder
    assert loaded.config["decoders"]["image"]["type"] == "latent_unet"
    assert report.measured["max |UNet output difference| (unet)"] <= LATENTS_ATOL
    assert (tmp_path / "hf" / "unet" / "config.json").is_file()
    vae = AutoencoderKL.from_pretrained(tmp_path / "hf", subfolder="vae", local_files_only=True)
    images = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        theirs = (vae.encode(images).latent_dist.mean - vae.config.shift_factor) \
            * vae.config.scaling_factor
    assert (theirs - tok.encode(images)).abs().max() <= LATENTS_ATOL


# -- bad input -----------------------------------------------------------------------------------
def test_a_folder_that_is_not_a_model_is_named(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    with pytest.raises(ConfigError, match=r"'backbone' \(hf_causal_lm\).*no config\.json.*notes"):
        _backbone(empty)
    with pytest.raises(ConfigError, match="not found"):
        _backbone(tmp_path / "missing")
    (tmp_path / "weights_gone").mkdir()
    (tmp_path / "weights_gone" / "config.json").write_text(json.dumps(
        {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ConfigError, match="no weights"):
        _backbone(tmp_path / "weights_gone")
    (tmp_path / "weights_gone" / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(ConfigError, match=r"only pickle weights \(pytorch_model\.bin\)"):
        _backbone(tmp_path / "weights_gone")
    with pytest.raises(ConfigError, match="holds no Hugging Face tokenizer"):
        build_component("tokenizers", {"type": "hf_tokenizer", "path": str(empty)},
                        "tokenizers.text")
    with pytest.raises(ConfigError, match="not a diffusers model folder"):
        build_component("tokenizers", {"type": "diffusers_vae", "path": str(empty)},
                        "tokenizers.image")


def test_an_encoder_only_model_is_refused_as_backbone(tmp_path):
    from transformers import BertConfig, BertForMaskedLM, BertModel

    config = BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=4, intermediate_size=64)
    BertModel(config).save_pretrained(tmp_path / "bert")
    with pytest.raises(ConfigError, match="BertModel.*encoder"):
        _backbone(tmp_path / "bert")
    BertForMaskedLM(config).save_pretrained(tmp_path / "mlm")
    with pytest.raises(ConfigError, match="encoder"):
        _backbone(tmp_path / "mlm")


def test_a_diffusers_folder_of_another_model_is_not_a_vae(tmp_path):
    from diffusers import UNet2DModel

    UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8),
                norm_num_groups=8, down_block_types=("DownBlock2D",) * 2,
                up_block_types=("UpBlock2D",) * 2).save_pretrained(tmp_path / "unet")
    with pytest.raises(ConfigError, match="UNet2DModel, not an AutoencoderKL"):
        build_component("tokenizers", {"type": "diffusers_vae", "path": str(tmp_path / "unet")},
                        "tokenizers.image")


@requires_fashion_mnist
def test_a_vae_for_other_channels_than_the_data_is_refused_before_training(tmp_path):
    from multimodal.testing import TINY, tiny_image_config
    from multimodal.training.trainer import train

    rgb = tiny_diffusers_vae(tmp_path / "rgb_vae", in_channels=3)
    config = tiny_image_config(tokenizers={"image": {"type": "diffusers_vae", "path": str(rgb),
                                                     "image_size": 32}},
                               data={"image": {"type": "fashion_mnist",
                                               **TINY["datasets"]["fashion_mnist"]}})
    with pytest.raises(DataError, match=r"images are grey 32x32 .*\(1, 32, 32\).* reads RGB "
                                        r"32x32 \(3, 32, 32\)"):
        train(config, out_dir=tmp_path / "run", progress=False)
    assert not list((tmp_path / "run").glob("checkpoints/step_*"))


def test_lora_on_an_hf_backbone_exports_as_a_peft_adapter(folders, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from multimodal.checkpoint import load_checkpoint
    from multimodal.interop import export_hf
    from multimodal.training.trainer import train

    modules = r"backbone\.model\.model\.layers\.\d+\.(self_attn\.(q|v)_proj|mlp\.down_proj)"
    config = _hf_config(folders["llama"], tmp_path, max_steps=3, lr=3e-2,
                        lora={"rank": 2, "alpha": 4, "modules": modules})
    checkpoint = train(config, out_dir=tmp_path / "run", progress=False)["checkpoint"]
    loaded = load_checkpoint(checkpoint)
    ids = _ids(loaded.tokenizers["text"])
    with torch.no_grad():
        ours = loaded.model.decoders["text"](loaded.model.backbone(ids))
    export_hf(checkpoint, tmp_path / "hf", lora=True)
    adapter = json.loads((tmp_path / "hf" / "lora" / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"])[:2] == ["model.layers.0.mlp.down_proj",
                                                     "model.layers.0.self_attn.q_proj"]
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True)
    original = AutoModelForCausalLM.from_pretrained(folders["llama"], local_files_only=True)
    assert torch.equal(base.lm_head.weight, loaded.model.backbone.model.lm_head.weight)
    assert not torch.equal(base.lm_head.weight, original.lm_head.weight)  # trained, unadapted
    with torch.no_grad():
        adapted = PeftModel.from_pretrained(base, tmp_path / "hf" / "lora").eval()
        assert (adapted(input_ids=ids).logits - ours).abs().max() <= LOGITS_ATOL


@pytest.mark.parametrize("architecture,layers", [
    ("llama", {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}),
    ("gpt2", {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"})])
def test_lora_by_default_adapts_every_linear_layer_of_an_hf_backbones_layers(
        folders, tmp_path, architecture, layers):
    """train.lora without modules: the transformers model's decoder layers (GPT-2's Conv1D
    ones too, transposed), not its embeddings or head; the adapter exports and loads in
    peft, and merged, with the checkpoint's logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from multimodal.checkpoint import load_checkpoint
    from multimodal.interop import export_hf
    from multimodal.training.trainer import train

    config = _hf_config(folders[architecture], tmp_path, max_steps=3, lr=3e-2,
                        lora={"rank": 2, "alpha": 4})
    checkpoint = train(config, out_dir=tmp_path / "run", progress=False)["checkpoint"]
    loaded = load_checkpoint(checkpoint)
    adapted = [n for n, m in loaded.model.named_modules() if hasattr(m, "lora_A")]
    depth = loaded.model.backbone.depth
    assert len(adapted) == depth * len(layers)
    assert {n.split(".", 5)[-1] for n in adapted} == layers
    trained = loaded.model.get_submodule(adapted[0]).lora_B["default"].weight
    assert trained.abs().max() > 0  # B starts at zero: the adapters trained
    ids = _ids(loaded.tokenizers["text"])
    with torch.no_grad():
        ours = loaded.model.decoders["text"](loaded.model.backbone(ids))
    export_hf(checkpoint, tmp_path / "hf", lora=True)
    export_hf(checkpoint, tmp_path / "merged")
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True)
        adapter = PeftModel.from_pretrained(base, tmp_path / "hf" / "lora").eval()
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged",
                                                      local_files_only=True).eval()
        for model in (adapter, merged):
            assert (model(input_ids=ids).logits - ours).abs().max() <= LOGITS_ATOL


def test_export_in_the_multimodal_format_from_the_command_line(tmp_path):
    from multimodal.checkpoint import load_checkpoint
    from multimodal.cli import main
    from multimodal.training.trainer import train

    checkpoint = train(tiny_config(data=_text_files(tmp_path), train={"max_steps": 1}),
                       out_dir=tmp_path / "run", progress=False)["checkpoint"]
    assert main(["export", str(checkpoint), str(tmp_path / "ship")]) == 0
    shipped, original = load_checkpoint(tmp_path / "ship"), load_checkpoint(checkpoint)
    assert not (tmp_path / "ship" / "optimizer.safetensors").exists()
    weight = original.model.backbone.tok_embeddings.weight
    assert torch.equal(shipped.model.backbone.tok_embeddings.weight, weight.half().float())
    assert main(["export", str(checkpoint), str(tmp_path / "x"), "--lora"]) == 2
    assert not (tmp_path / "x").exists()
