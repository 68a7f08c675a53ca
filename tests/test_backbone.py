import pytest
import torch

from multimodal.testing import tiny_backbone


@pytest.fixture
def backbone():
    model = tiny_backbone(num_kv_heads=2).eval()
    torch.nn.init.normal_(model.modality_embeddings.weight, std=0.02)
    return model


def test_output_shape(backbone):
    ids = torch.randint(0, backbone.vocab_size, (3, 10))
    assert backbone(ids).shape == (3, 10, backbone.dim)


def test_kv_cached_decoding_equals_full_forward(backbone):
    ids = torch.randint(0, backbone.vocab_size, (2, 24))
    with torch.no_grad():
        full = backbone(ids)
        cache = backbone.new_kv_cache(2)
        steps = [backbone(ids[:, :8], kv_cache=cache)]      # prefill
        steps.append(backbone(ids[:, 8:13], kv_cache=cache))  # a chunk after a prefix
        for i in range(13, 24):                              # one token at a time
            steps.append(backbone(ids[:, i : i + 1], kv_cache=cache))
    assert cache.pos == 24
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("batch", [1, 2])
def test_static_cache_decode_step_equals_full_forward(backbone, batch):
    """decode_step, positions as a tensor on a cache longer than the sequence (its unwritten
    slots hold stale values, masked): logits equal the full forward's, after a prefill by
    decode_step (what a compiled pipeline runs) or by forward (its cache then continued)."""
    from multimodal.modalities.text.head import LMHead

    head = LMHead(backbone=backbone)
    ids = torch.randint(0, backbone.vocab_size, (batch, 24))
    with torch.no_grad():
        full = head(backbone(ids))  # (b, n, v)
        for prefill in ("decode_step", "forward"):
            cache = backbone.new_kv_cache(batch, 40)
            for buffer in cache.keys + cache.values:
                buffer.normal_()  # stale values in every slot: only the mask keeps them out
            if prefill == "decode_step":
                steps = [head(backbone.decode_step(ids[:, :8], torch.arange(8), cache))]
            else:
                steps = [head(backbone(ids[:, :8], kv_cache=cache))]
            steps.append(head(backbone.decode_step(ids[:, 8:13], torch.arange(8, 13), cache)))
            position = torch.tensor([13])
            for i in range(13, 24):  # one token at a time, the position advanced in place
                steps.append(head(backbone.decode_step(ids[:, i : i + 1], position, cache)))
                position += 1
            torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-4,
                                       msg=lambda m, by=prefill: f"prefill by {by}: {m}")


def test_causality(backbone):
    ids = torch.randint(0, backbone.vocab_size, (1, 12))
    changed = ids.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % backbone.vocab_size
    with torch.no_grad():
        a, b = backbone(ids), backbone(changed)
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_embeddings_input_and_modality_ids(backbone):
    ids = torch.randint(0, backbone.vocab_size, (2, 6))
    embeds = backbone.embed(ids)
    with torch.no_grad():
        torch.testing.assert_close(backbone(inputs_embeds=embeds), backbone(ids))
        other = backbone(inputs_embeds=embeds, modality_ids=torch.ones(2, 6, dtype=torch.long))
    assert not torch.allclose(other, backbone(ids))


def test_input_errors(backbone):
    ids = torch.zeros(1, backbone.max_seq_len + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="max_seq_len"):
        backbone(ids)
    with pytest.raises(ValueError, match="exactly one"):
        backbone()


def test_bad_head_configuration():
    with pytest.raises(ValueError, match="divide"):
        tiny_backbone(dim=30, num_heads=4)


def test_loss_falls_when_overfitting_one_batch():
    from multimodal.modalities.text.head import LMHead
    from multimodal.modalities.text.modality import TextModality

    backbone = tiny_backbone()
    head = LMHead(backbone=backbone)
    batch = {"input_ids": torch.randint(0, backbone.vocab_size, (4, 17))}
    optimizer = torch.optim.AdamW(backbone.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss, _ = TextModality().loss(backbone, head, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
