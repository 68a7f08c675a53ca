"""A pretrained causal language model from a local Hugging Face folder as the shared backbone.

``backbone: {type: hf_causal_lm, path: DIR}`` loads a ``transformers`` causal LM (Llama, GPT-2,
Qwen, ... style) from ``DIR`` (never the hub: ``local_files_only``; safetensors weights only, no
pickle) and gives it the interface of :class:`multimodal.backbone.transformer.
TransformerBackbone`: ``forward(input_ids | inputs_embeds, modality_ids, kv_cache) -> final
hidden states``, ``embed``, ``new_kv_cache``, ``dim``, ``max_seq_len``, ``tok_embeddings``.
Text is the model's own input; other modalities enter through ``inputs_embeds`` plus a learned
modality-type embedding, as in the built-in backbone. The model's own output layer is exposed as
``output_embeddings``, which the ``lm_head`` decoder uses, so text logits are the model's logits.

The modality-type row of text (id 0) is held at zero (no gradient reaches it): text positions
see exactly the pretrained model, and a trained backbone exports back to ``transformers`` with a
plain ``save_pretrained`` (:mod:`multimodal.interop.hf_export`).

A checkpoint stores the model's ``config.json`` (``backbone/config.json``, from
:meth:`checkpoint_files`) beside its weights; loading the checkpoint builds the model from that
file (the builder injects ``checkpoint_dir``) and never reads ``path`` again, so a trained model
loads after the folder it started from is gone.

Axes: b batch, n tokens, d width, v vocabulary.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from multimodal.registry import backbones

CONFIG_FILE = "backbone/config.json"  # inside a checkpoint


def check_model_folder(path: str | Path, what: str = "model") -> Path:
    """``path`` as a directory holding a ``config.json``.

    Raises:
        ValueError: the path is missing, not a directory, or not a transformers/diffusers
            folder (no ``config.json``).
    """
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ValueError(f"{what} folder not found: {folder}")
    if not folder.is_dir():
        raise ValueError(f"{folder} is a file; expected a Hugging Face {what} folder "
                         "(config.json + model.safetensors, as save_pretrained writes)")
    if not (folder / "config.json").is_file():
        present = ", ".join(sorted(p.name for p in folder.iterdir())[:8]) or "nothing"
        raise ValueError(f"{folder} is not a Hugging Face {what} folder: it has no config.json "
                         f"(it holds {present})")
    return folder


def check_safetensors(folder: Path, weights: str = "model") -> None:
    """Raise ``ValueError`` unless ``folder`` holds safetensors weights (``weights``
    ``.safetensors`` or its sharded index); a pickle-only folder is named as such."""
    if (folder / f"{weights}.safetensors").is_file() \
            or (folder / f"{weights}.safetensors.index.json").is_file():
        return
    pickles = sorted(p.name for p in folder.glob("*.bin"))
    if pickles:
        raise ValueError(f"{folder} holds only pickle weights ({', '.join(pickles)}), which this "
                         "project never loads (a pickle can run code); convert them to "
                         "safetensors (model.save_pretrained(DIR, safe_serialization=True))")
    raise ValueError(f"{folder} has a config.json but no weights ({weights}.safetensors)")


def causal_lm_problem(config) -> str | None:
    """Why a transformers ``config`` cannot serve as a causal backbone, or ``None``."""
    # deferred: transformers takes seconds to import; only this backbone needs it
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = getattr(config, "model_type", "?")
    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    architectures = list(getattr(config, "architectures", None) or [])
    if getattr(config, "is_encoder_decoder", False):
        return (f"it is an encoder-decoder model ({model_type}); a backbone must be a "
                "decoder-only causal language model")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return (f"model type '{model_type}' has no causal language model in transformers (an "
                "encoder-only or non-text model); a backbone must be a decoder-only causal "
                "LM such as LlamaForCausalLM or GPT2LMHeadModel")
    if architectures and not any(a in causal for a in architectures):
        return (f"it holds a {', '.join(architectures)}, not a causal language model (an "
                "encoder-only model cannot serve: it attends in both directions); expected e.g. "
                f"{MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]}")
    return None


def _building_on_meta() -> bool:
    """Whether modules are being built on the ``meta`` device (``with torch.device("meta")``)."""
    return torch.empty(0).device.type == "meta"


class HFKVCache:
    """The key/value cache of an :class:`HFCausalLMBackbone`: a transformers ``DynamicCache``
    with the ``pos`` and ``max_seq_len`` the pipelines read (``pos`` advances by ``n`` in each
    forward, as for :class:`multimodal.nn.attention.KVCache`)."""

    def __init__(self, *, config, max_seq_len: int):
        # deferred: transformers takes seconds to import; only this backbone needs it
        from transformers import DynamicCache

        self.cache = DynamicCache(config=config)
        self.max_seq_len = max_seq_len
        self.pos = 0


@backbones.register("hf_causal_lm")
class HFCausalLMBackbone(nn.Module):
    """A transformers causal LM read from a local folder, as the shared backbone.

    Args:
        path: The model folder (``config.json`` + ``model.safetensors``, as ``save_pretrained``
            writes). Read with ``local_files_only``: no hub access.
        num_modalities: Size of the modality-type embedding (default 8; row 0, text, stays 0).
        max_seq_len: Longest sequence (default: the model's ``max_position_embeddings``; a
            larger value is refused).
        vocab_size: Ids of the text tokenizer (set by the builder); must fit the model's
            embeddings.
        checkpoint_dir: A checkpoint holding ``backbone/config.json`` (set by the builder when
            loading one): the model is built from that file, its weights come from the
            checkpoint, and ``path`` is not read.

    Raises:
        ValueError: ``path`` is not a model folder, its weights are not safetensors, the model
            is not a causal LM (an encoder-only or encoder-decoder model), the tokenizer has
            more ids than the model's embeddings, or ``max_seq_len`` exceeds the model's.
    """

    injected_args = ("vocab_size", "checkpoint_dir")

    def __init__(self, *, path: str, num_modalities: int = 8, max_seq_len: int | None = None,
                 vocab_size: int | None = None, checkpoint_dir: str | Path | None = None):
        super().__init__()
        # deferred: transformers takes seconds to import; only this backbone needs it
        from transformers import AutoConfig, AutoModelForCausalLM

        saved = Path(checkpoint_dir) / CONFIG_FILE if checkpoint_dir is not None else None
        if saved is not None and saved.is_file():
            config = AutoConfig.from_pretrained(saved.parent, local_files_only=True)
            self.model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            where = str(saved)
        else:
            folder = check_model_folder(path)
            try:
                config = AutoConfig.from_pretrained(folder, local_files_only=True)
            except (OSError, ValueError, KeyError) as exc:
                raise ValueError(f"{folder}/config.json is not a transformers model config: "
                                 f"{str(exc).splitlines()[0]}") from None
            problem = causal_lm_problem(config)
            if problem:
                raise ValueError(f"{folder} cannot serve as the backbone: {problem}")
            check_safetensors(folder)
            if _building_on_meta():
                # shapes only (the memory plan builds the model on the meta device): the
                # weights are not read, and from_pretrained refuses a meta context
                self.model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            else:
                try:
                    self.model = AutoModelForCausalLM.from_pretrained(
                        folder, local_files_only=True, use_safetensors=True,
                        dtype=torch.float32)
                except (OSError, ValueError, RuntimeError) as exc:
                    raise ValueError(f"cannot load the model in {folder}: "
                                     f"{str(exc).splitlines()[0]}") from None
            where = str(folder)
        config = self.model.config
        self.source = where
        self.dim = int(config.hidden_size)
        self.depth = int(config.num_hidden_layers)
        self.num_heads = int(config.num_attention_heads)
        self.vocab_size = int(self.model.get_input_embeddings().weight.shape[0])
        self.num_modalities = num_modalities
        limit = int(getattr(config, "max_position_embeddings", 0) or 0) or 2048
        if max_seq_len is not None and max_seq_len > limit:
            raise ValueError(f"max_seq_len {max_seq_len} exceeds the model's "
                             f"max_position_embeddings ({limit})")
        self.max_seq_len = max_seq_len or limit
        if vocab_size is not None and vocab_size > self.vocab_size:
            raise ValueError(f"the text tokenizer has {vocab_size} ids but the model in {where} "
                             f"embeds {self.vocab_size}; use the model's own tokenizer "
                             "(tokenizers.text: {type: hf_tokenizer, path: DIR})")
        if self.output_embeddings is None or getattr(self.output_embeddings, "bias", None) \
                is not None:
            raise ValueError(f"the model in {where} has no bias-free output layer "
                             "(get_output_embeddings()); it cannot give the text logits")
        # transformers 5.2x renamed past_key_values to cache; older model classes keep it
        parameters = inspect.signature(self.model.base_model.forward).parameters
        self._cache_arg = "cache" if "cache" in parameters else "past_key_values"
        self.modality_embeddings = nn.Embedding(num_modalities, self.dim)
        nn.init.zeros_(self.modality_embeddings.weight)
        if (saved is None or not saved.is_file()) and not _building_on_meta():
            self._check_causal()

    @torch.no_grad()
    def _check_causal(self) -> None:
        """Refuse a model whose first position sees a later token (bidirectional attention:
        an encoder), whatever its config says: two sequences that differ only in their last
        token must give the same states before it."""
        ids = torch.tensor([[1, 2, 3], [1, 2, 4]]) % self.vocab_size
        was_training = self.model.training
        h = self.model.eval().base_model(input_ids=ids).last_hidden_state  # (2, 3, d)
        self.model.train(was_training)
        if not torch.allclose(h[0, :2], h[1, :2], atol=1e-5):
            raise ValueError(f"the model in {self.source} is not causal: its first positions "
                             "change with a later token (an encoder attends in both "
                             "directions); a backbone must be a decoder-only causal LM")

    # -- what the rest of the code reads --------------------------------------------------------
    @property
    def tok_embeddings(self) -> nn.Embedding:
        """The model's input embeddings (v, d)."""
        return self.model.get_input_embeddings()

    @property
    def output_embeddings(self) -> nn.Module | None:
        """The model's LM head (a (v, d) linear layer, tied or not)."""
        return self.model.get_output_embeddings()

    @property
    def lora_modules(self) -> str:
        """``train.lora``'s default (:mod:`multimodal.nn.lora`), by name inside the backbone:
        every linear layer of the model's decoder layers (``model.model.layers.<i>.*`` of a
        Llama, ``model.transformer.h.<i>.*`` of a GPT-2, whose ``Conv1D`` layers count as
        linear), not the embeddings or the LM head."""
        layers = max((m for m in self.model.modules() if isinstance(m, nn.ModuleList)),
                     key=len, default=None)
        name = next((n for n, m in self.model.named_modules() if m is layers), None)
        if layers is None or name is None or len(layers) != self.depth:
            return r"model\..+"  # (no layer list: every linear layer of the model)
        return rf"model\.{re.escape(name)}\.\d+\..+"

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings (b, n, d) of text ids (b, n)."""
        return self.tok_embeddings(input_ids)

    def _modality(self, modality_ids: torch.Tensor | int) -> torch.Tensor | float:
        if isinstance(modality_ids, int):
            return 0.0 if modality_ids == 0 else self.modality_embeddings.weight[modality_ids]
        # padding_idx 0: text's row gets no gradient, so it stays zero (see the module doc)
        return F.embedding(modality_ids, self.modality_embeddings.weight, padding_idx=0)

    def forward(self, input_ids: torch.Tensor | None = None, *,
                inputs_embeds: torch.Tensor | None = None,
                modality_ids: torch.Tensor | int = 0,
                kv_cache: HFKVCache | None = None) -> torch.Tensor:
        """Run the model; see :meth:`TransformerBackbone.forward`.

        Args:
            input_ids: Text token ids (b, n), int64; or
            inputs_embeds: Embeddings (b, n, d) (exactly one of the two).
            modality_ids: Modality-type id per position (b, n), or one int (default 0, text).
            kv_cache: From :meth:`new_kv_cache`; its ``pos`` advances by ``n``.

        Returns:
            Final hidden states (b, n, d), after the model's last norm.

        Raises:
            ValueError: neither or both inputs given, or the sequence exceeds ``max_seq_len``.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        x = x + self._modality(modality_ids)
        b, n = x.shape[:2]
        start = kv_cache.pos if kv_cache is not None else 0
        limit = min(self.max_seq_len, kv_cache.max_seq_len) if kv_cache is not None \
            else self.max_seq_len
        if start + n > limit:
            raise ValueError(f"sequence of {start + n} positions exceeds the backbone's "
                             f"max_seq_len ({limit})")
        # positions are the model's default (start..start+n-1, from the cache's length): given
        # explicitly, transformers would look for packed sequences in them on every call
        if kv_cache is None and x.device.type == "meta":
            # the memory plan's shapes-only pass: without a cache transformers reads the
            # positions' values (looking for packed sequences), which meta tensors do not have
            kv_cache = self.new_kv_cache(b)
        cache = {self._cache_arg: kv_cache.cache} if kv_cache is not None else {}
        out = self.model.base_model(inputs_embeds=x, use_cache=kv_cache is not None, **cache)
        if kv_cache is not None:
            kv_cache.pos += n
        return out.last_hidden_state

    def new_kv_cache(self, batch_size: int, max_seq_len: int | None = None,
                     dtype: torch.dtype | None = None) -> HFKVCache:
        """An empty cache (it grows as positions are written; ``batch_size`` and ``dtype``
        follow the first forward)."""
        return HFKVCache(config=self.model.config, max_seq_len=max_seq_len or self.max_seq_len)

    def checkpoint_files(self) -> dict[str, bytes]:
        """Files a checkpoint stores beside the weights to rebuild this model without
        ``path``: the model's ``config.json``."""
        return {CONFIG_FILE: self.model.config.to_json_string(use_diff=False).encode("utf-8")}

    def num_parameters(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_embeddings.weight.numel() + self.modality_embeddings.weight.numel()
        return n
