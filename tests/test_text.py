import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from multimodal.modalities.text.tokenizer import ByteBPETokenizer
from multimodal.pipelines.sampling import sample_next_token
from multimodal.testing import tiny_tokenizer


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_tokenizer_round_trips_arbitrary_unicode(text):
    tok = tiny_tokenizer()
    assert tok.decode(tok.encode(text)) == text


def test_tokenizer_save_load(tmp_path):
    tok = tiny_tokenizer()
    tok.save(tmp_path / "t.json")
    loaded = ByteBPETokenizer.load(tmp_path / "t.json")
    text = "The only way to get rid of a temptation 🙂"
    assert loaded.encode(text) == tok.encode(text)
    assert loaded.vocab_size == tok.vocab_size and loaded.eos_id == tok.eos_id


def test_token_byte_lengths_add_up():
    tok = tiny_tokenizer()
    text = "héllo wörld, the banker's umbrella 🙂"
    lengths = tok.token_byte_lengths()
    assert sum(lengths[i] for i in tok.encode(text)) == len(text.encode("utf-8"))


def test_tokenizer_errors(tmp_path):
    with pytest.raises(ValueError, match="at least 258"):
        ByteBPETokenizer(vocab_size=100)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    from multimodal.errors import CheckpointError

    with pytest.raises(CheckpointError, match="not a valid tokenizer"):
        ByteBPETokenizer.load(bad)


def test_greedy_is_argmax():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0]])
    assert sample_next_token(logits, do_sample=False).tolist() == [1, 0]


def test_top_k_and_top_p_restrict_support():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    top2 = sample_next_token(logits, top_k=2, generator=g)
    assert set(top2.tolist()) == {0, 1}
    nucleus = sample_next_token(logits, top_p=0.7, generator=g)  # 0.5 + 0.3 >= 0.7
    assert set(nucleus.tolist()) == {0, 1}
    tiny_p = sample_next_token(logits, top_p=0.01, generator=g)
    assert set(tiny_p.tolist()) == {0}
    # Without restriction, frequencies follow the probabilities.
    free = sample_next_token(logits, generator=g)
    assert abs((free == 0).float().mean().item() - 0.5) < 0.05


def test_sampling_is_seeded():
    logits = torch.randn(4, 50)
    a = sample_next_token(logits, generator=torch.Generator().manual_seed(3))
    b = sample_next_token(logits, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
