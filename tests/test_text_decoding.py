"""Text decoding through the compiled decode step (``TextGenerationPipeline.compile``): the
same tokens as the uncompiled KV-cached loop, one compilation per batch size (not per
position, prompt length or ``max_new_tokens``: the static cache of
``TransformerBackbone.decode_step``), and frozen weights that follow a weight change.

The cached-vs-full equivalence of the step itself is in ``tests/test_backbone.py``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.testing import CompileCounter

import multimodal
from multimodal.errors import InputError
from multimodal.pipelines.base import check_compile
from multimodal.pipelines.text_generation import (
    CompiledDecodeStep,
    decode_step_compile_kwargs,
)

CALLS = [  # one row; a longer prompt and more tokens; a list (its rows grouped by length)
    {"prompt": "The cat", "max_new_tokens": 12, "do_sample": False},
    {"prompt": "Once upon a time there", "max_new_tokens": 20, "seed": 3},
    {"prompt": ["a", "The cat", "xy"], "max_new_tokens": 8, "num_samples": 2, "seed": 5},
]


@pytest.fixture(scope="module")
def pipe():
    return multimodal.load_pipeline("text-generation")


def test_compiled_step_gives_the_uncompiled_tokens_and_compiles_once_per_batch_size(pipe):
    expected = [pipe(**kwargs).token_ids for kwargs in CALLS]
    assert all(any(rows) for rows in expected)
    compiled = copy.deepcopy(pipe)
    counter = CompileCounter()  # a backend that counts the graphs it is given
    assert compiled.compile(backend=counter) is compiled
    assert isinstance(compiled._compiled_step, CompiledDecodeStep)

    assert compiled(**CALLS[0]).token_ids == expected[0]
    assert counter.frame_count == 1  # the decode step at batch 1; the prefill runs eager
    assert compiled(**CALLS[1]).token_ids == expected[1]
    assert counter.frame_count == 1  # another prompt length and cache length: no recompile
    rows = compiled(**CALLS[2])
    assert rows.token_ids == expected[2]
    groups = {len(compiled.tokenizer.encode(p)) for p in CALLS[2]["prompt"]}
    assert counter.frame_count == 1 + len(groups)  # one more per new batch size


def test_decode_step_compile_defaults():
    cpu = decode_step_compile_kwargs({})
    assert cpu["dynamic"] is False
    assert cpu["options"]["cpp_wrapper"] and cpu["options"]["freezing"]
    assert cpu["options"]["max_autotune"]
    assert "freezing" not in decode_step_compile_kwargs({}, "cuda")["options"]
    mine = decode_step_compile_kwargs({"options": {"freezing": False}, "dynamic": None})
    assert mine["options"]["freezing"] is False and mine["dynamic"] is None  # given ones win
    assert "options" not in decode_step_compile_kwargs({"backend": "aot_eager"})
    assert "options" not in decode_step_compile_kwargs({"mode": "reduce-overhead"})


@pytest.mark.slow
def test_inductor_step_with_frozen_weights_follows_a_weight_change(pipe):
    """Minutes on a CPU: inductor writes and builds C++ and autotunes the matmuls."""
    try:
        check_compile("cpu", "inductor")
    except InputError as exc:
        pytest.skip(str(exc))
    changed = copy.deepcopy(pipe)
    with torch.no_grad():
        for weight in changed.backbone.parameters():
            weight.mul_(1.5)
    kwargs = {"prompt": "The cat", "max_new_tokens": 12, "do_sample": False}
    before, after = pipe(**kwargs).token_ids, changed(**kwargs).token_ids
    assert before != after

    compiled = copy.deepcopy(pipe).compile()  # the defaults: frozen weights on a CPU
    assert compiled._compiled_step.freezing
    assert compiled(**kwargs).token_ids == before
    with torch.no_grad():  # in place, after the weights were frozen into the compiled step
        for weight in compiled.backbone.parameters():
            weight.mul_(1.5)
    assert compiled(**kwargs).token_ids == after
