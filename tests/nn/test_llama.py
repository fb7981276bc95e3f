"""Our Llama forward over slot caches equals transformers' LlamaModel, whole and step by step."""

import pytest
import torch
from transformers import LlamaModel

from tadastream.config import tada_config
from tadastream.nn.kv_cache import CacheSpec, SlotCache, SlotPool
from tadastream.nn.linear import invariant_rows, linear_factory
from tadastream.nn.llama import LlamaBackbone, Segment


def config(kv_heads=2, rope="llama3"):
    scaling = {"rope_type": "default"}
    if rope == "llama3":
        scaling = {
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        }
    return tada_config(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=8,
        num_key_value_heads=kv_heads,
        head_dim=8,
        rope_theta=500000.0,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_scaling=scaling,
    )


def pair(cfg, seed=0):
    """(ours, transformers') with the same random weights."""
    torch.manual_seed(seed)
    ref = LlamaModel(cfg).eval()
    for p in ref.parameters():
        torch.nn.init.normal_(p, std=0.2)
    ours = LlamaBackbone(cfg).eval()
    missing, unexpected = ours.load_state_dict(ref.state_dict(), strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return ours, ref


def cache_for(cfg, rows, positions=8):
    return SlotCache(CacheSpec.for_config(cfg, torch.float32, torch.device("cpu")), rows, positions)


@pytest.mark.parametrize("kv_heads, rope", [(2, "llama3"), (8, "default")])
@torch.no_grad()
def test_whole_sequence_equals_transformers(kv_heads, rope):
    cfg = config(kv_heads, rope)
    ours, ref = pair(cfg)
    x = torch.randn(2, 37, cfg.hidden_size)
    expected = ref(inputs_embeds=x).last_hidden_state
    got = ours(x.reshape(-1, cfg.hidden_size), [Segment(cache_for(cfg, 2), 2, 0, 37)])
    torch.testing.assert_close(got.view(2, 37, -1), expected, atol=1e-5, rtol=0)


@torch.no_grad()
def test_prefill_chunks_then_steps_equal_the_whole_sequence():
    cfg = config()
    ours, ref = pair(cfg)
    x = torch.randn(2, 40, cfg.hidden_size)
    expected = ref(inputs_embeds=x).last_hidden_state
    cache = cache_for(cfg, 2, positions=4)  # grows while filling: capacity is not a limit
    outs = []
    for start, end in [(0, 16), (16, 32), (32, 35)] + [(t, t + 1) for t in range(35, 40)]:
        cache.reserve(end)
        part = x[:, start:end].reshape(-1, cfg.hidden_size)
        outs.append(ours(part, [Segment(cache, 2, start, end - start)]).view(2, end - start, -1))
    torch.testing.assert_close(torch.cat(outs, dim=1), expected, atol=1e-5, rtol=0)
    assert cache.length == 40 and cache.capacity >= 40


@torch.no_grad()
def test_segments_side_by_side_equal_each_alone_bit_for_bit():
    """One call over several streams (different positions, row counts, a prefill chunk and
    single steps, padding rows) gives each stream exactly what it gets alone."""
    cfg = config()
    ours, _ = pair(cfg)
    prefix = [torch.randn(r, n, cfg.hidden_size) for r, n in ((1, 9), (2, 20), (3, 5))]
    steps = [torch.randn(1, 1, cfg.hidden_size), torch.randn(2, 1, cfg.hidden_size), torch.randn(3, 6, cfg.hidden_size)]

    def run(indices):
        caches = {i: cache_for(cfg, prefix[i].shape[0], 32) for i in indices}
        for i in indices:  # fill each cache with its prefix
            ours(
                prefix[i].reshape(-1, cfg.hidden_size), [Segment(caches[i], prefix[i].shape[0], 0, prefix[i].shape[1])]
            )
        rows = torch.cat([steps[i].reshape(-1, cfg.hidden_size) for i in indices])
        # padding rows attend to nothing; at least the rows from which this CPU's matmuls give a row
        # the same bits whatever its neighbours (as the engine pads)
        pad = max(3, invariant_rows("cpu", torch.float32) - rows.shape[0])
        rows = torch.cat([rows, torch.zeros(pad, cfg.hidden_size)])
        segs = [Segment(caches[i], steps[i].shape[0], prefix[i].shape[1], steps[i].shape[1]) for i in indices]
        out = ours(rows, segs)
        sizes = [steps[i].shape[0] * steps[i].shape[1] for i in indices]
        return dict(zip(indices, out[: sum(sizes)].split(sizes)))

    together = run([0, 1, 2])
    for i in range(3):
        assert torch.equal(run([i])[i], together[i]), i


@torch.no_grad()
def test_fused_inference_layout_equals_plain():
    cfg = config()
    ours, ref = pair(cfg)
    x = torch.randn(1, 12, cfg.hidden_size)
    expected = ref(inputs_embeds=x).last_hidden_state
    ours.fuse(linear_factory(torch.device("cpu"), torch.float32))
    assert ours.layers[0].self_attn.q_proj is None and ours.layers[0].self_attn.qkv is not None
    got = ours(x.reshape(-1, cfg.hidden_size), [Segment(cache_for(cfg, 1), 1, 0, 12)])
    torch.testing.assert_close(got.view(1, 12, -1), expected, atol=1e-5, rtol=0)


def test_rotary_frequencies_stay_float32_when_the_model_moves_to_bfloat16():
    ours, _ = pair(config())
    ours.to(torch.bfloat16)
    assert ours.inv_freq.dtype == torch.float32


def test_slot_cache_copies_a_row_and_keeps_what_it_holds_when_growing():
    cfg = config()
    cache = cache_for(cfg, 3, positions=4)
    k = torch.randn(1, cfg.num_key_value_heads, 4, 8)
    cache.write(1, 1, 0, k, -k)
    cache.copy_row(0, 2, 0, 4)
    cache.length = 4
    cache.reserve(300)
    assert cache.capacity >= 300 and cache.capacity % 256 == 0
    keys, values = cache.view(1, 3, 4)
    assert torch.equal(keys[0], k[0]) and torch.equal(keys[2], k[0]) and torch.equal(values[2], -k[0])


def test_slot_pool_is_bounded_and_reuses_buffers():
    pool = SlotPool(CacheSpec.for_config(config(), torch.float32, torch.device("cpu")), max_slots=2)
    a, b = pool.acquire(2, 100), pool.acquire(3, 300)
    with pytest.raises(RuntimeError, match="all 2 slots"):
        pool.acquire(1, 10)
    held = pool.nbytes
    pool.release(a)
    pool.release(a)  # twice is harmless
    c = pool.acquire(1, 50)  # fits in a's buffer: no new memory
    assert c is a and pool.nbytes == held and pool.in_use == 2
    pool.release(b)
    pool.release(c)
    d = pool.acquire(3, 1000)  # bigger than any buffer: the smallest is replaced, the count stays 2
    assert d.capacity >= 1000 and pool.in_use == 1 and len(pool._free) + pool.in_use == 2
    pool.release(d)
    assert pool.trim() > 0 and pool.nbytes == 0


@pytest.mark.parametrize("rope", ["default", "llama3"])
def test_rotary_frequencies_are_transformers_own(rope):
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    cfg = config(2, rope)
    ours = LlamaBackbone(cfg)
    theirs = LlamaRotaryEmbedding(cfg)
    assert torch.equal(ours.inv_freq, theirs.inv_freq.float()) and ours.attention_scaling == theirs.attention_scaling
