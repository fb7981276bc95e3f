"""Token alignment DP and the wav2vec2 aligner (tiny random models, no network)."""

from __future__ import annotations

import itertools
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from tadastream.codec import aligner as aligner_mod
from tadastream.codec.aligner import Aligner, TranscriptError, align_tokens, wav2vec2_large_config
from tadastream.config import AlignerConfig
from tadastream.hub import CheckpointError
from tests.helpers.paths import TINY_TOKENIZER

TINY_W2V = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=[16] * 7,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TINY_TOKENIZER))


@pytest.fixture(scope="module")
def tiny_aligner(tokenizer):
    torch.manual_seed(0)
    return Aligner(
        AlignerConfig(), tokenizer=tokenizer, wav2vec2_config=wav2vec2_large_config(len(tokenizer), **TINY_W2V)
    )


# ---- the DP -----------------------------------------------------------------------------------


def _brute_force(scores: torch.Tensor, tokens: list[int]) -> tuple[float, list[tuple[int, ...]]]:
    """Best total and every placement achieving it, by enumeration (float64)."""
    s = scores.double()
    best, winners = -float("inf"), []
    for combo in itertools.combinations(range(scores.shape[0]), len(tokens)):
        total = float(sum(s[i, t] for i, t in zip(combo, tokens)))
        if total > best + 1e-9:
            best, winners = total, [combo]
        elif abs(total - best) <= 1e-9:
            winners.append(combo)
    return best, winners


def _slow_rule(scores: torch.Tensor, tokens: list[int]) -> list[int]:
    """The reference's recurrence written plainly: later frame on ties, row by row."""
    L, T = scores.shape[0], len(tokens)
    p = [[float(scores[i, t]) for t in tokens] for i in range(L)]
    F = [[-float("inf")] * T for _ in range(L)]
    back = [[0] * T for _ in range(L)]
    run, arg = -float("inf"), 0
    for i in range(L):
        if p[i][0] >= run:
            run, arg = p[i][0], i
        F[i][0], back[i][0] = run, arg
    acc = 0.0
    for d in range(T):
        acc += p[d][d]
        F[d][d], back[d][d] = acc, d
    for i in range(1, L):
        for j in range(1, min(i, T)):
            use, skip = F[i - 1][j - 1] + p[i][j], F[i - 1][j]
            F[i][j], back[i][j] = (use, i) if use >= skip else (skip, -1)
    out, i, j = [0] * T, L - 1, T - 1
    while j >= 0:
        if j == 0:
            out[0] = back[i][0]
            break
        if back[i][j] == -1:
            i -= 1
        else:
            out[j], i, j = back[i][j], i - 1, j - 1
    return out


def test_align_tokens_matches_brute_force():
    gen = torch.Generator().manual_seed(1)
    for _ in range(300):
        L = int(torch.randint(1, 9, (1,), generator=gen))
        T = int(torch.randint(1, L + 1, (1,), generator=gen))
        V = int(torch.randint(1, 6, (1,), generator=gen))
        scores = torch.randn(L, V, generator=gen)
        tokens = torch.randint(0, V, (T,), generator=gen)
        got = align_tokens(scores, tokens)
        best, winners = _brute_force(scores, tokens.tolist())
        assert all(b > a for a, b in zip(got, got[1:])) and 0 <= got[0] and got[-1] < L
        total = float(sum(scores.double()[i, t] for i, t in zip(got, tokens.tolist())))
        assert total == pytest.approx(best, abs=1e-5)
        if len(winners) == 1:
            assert tuple(got) == winners[0]


def test_align_tokens_tie_rule_matches_reference_recurrence():
    gen = torch.Generator().manual_seed(2)
    for _ in range(400):
        L = int(torch.randint(1, 14, (1,), generator=gen))
        T = int(torch.randint(1, L + 1, (1,), generator=gen))
        V = int(torch.randint(1, 4, (1,), generator=gen))
        scores = torch.randint(-2, 3, (L, V), generator=gen).float()  # integers: many exact ties
        tokens = torch.randint(0, V, (T,), generator=gen)
        assert align_tokens(scores, tokens) == _slow_rule(scores, tokens.tolist())


def test_align_tokens_all_ties_packs_tokens_last():
    assert align_tokens(torch.zeros(5, 3), torch.tensor([1, 2])) == [3, 4]
    assert align_tokens(torch.zeros(3, 1), torch.tensor([0, 0, 0])) == [0, 1, 2]


def test_align_tokens_rejects_impossible_input():
    with pytest.raises(TranscriptError, match="too long for the clip or does not match it"):
        align_tokens(torch.zeros(3, 4), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(TranscriptError, match="no tokens"):
        align_tokens(torch.zeros(3, 4), torch.tensor([], dtype=torch.long))


# ---- the model --------------------------------------------------------------------------------


def test_aligner_keys_follow_reference(tiny_aligner):
    keys = tiny_aligner.state_dict().keys()
    assert "encoder.lm_head.weight" in keys
    assert "encoder.wav2vec2.feature_extractor.conv_layers.0.conv.weight" in keys
    assert "encoder.wav2vec2.encoder.pos_conv_embed.conv.parametrizations.weight.original0" in keys
    assert tiny_aligner.state_dict()["encoder.lm_head.weight"].shape[0] == len(tiny_aligner.tokenizer)


def test_aligner_round_trip(tmp_path, tiny_aligner):
    tiny_aligner.save_pretrained(tmp_path / "aligner")
    stored = json.loads((tmp_path / "aligner" / "config.json").read_text())
    assert stored["encoder_config"]["hidden_size"] == 32
    assert (tmp_path / "aligner" / "tokenizer.json").is_file()
    loaded = Aligner.from_pretrained(tmp_path)  # codec root: finds aligner/ itself
    for key, value in tiny_aligner.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    audio = torch.randn(16000) * 0.1
    a = tiny_aligner.eval().logits(audio.unsqueeze(0))
    b = loaded.logits(audio.unsqueeze(0))
    assert torch.equal(a, b)


def test_aligner_missing_and_misshaped_keys(tmp_path, tiny_aligner):
    folder = tiny_aligner.save_pretrained(tmp_path / "aligner")
    state = load_file(str(folder / "model.safetensors"))
    key = "encoder.wav2vec2.encoder.layers.1.attention.q_proj.weight"
    save_file({k: v for k, v in state.items() if k != key}, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        Aligner.from_pretrained(folder)
    state[key] = torch.zeros(3, 3)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        Aligner.from_pretrained(folder)


def test_aligner_reference_layout_without_stored_architecture(tmp_path, tiny_aligner, monkeypatch):
    """Published folders carry only base_model_name/tokenizer_name/emb_dim and old weight-norm names."""
    folder = tmp_path / "aligner"
    folder.mkdir()
    config = {
        "base_model_name": "facebook/wav2vec2-large",
        "tokenizer_name": "meta-llama/Llama-3.2-1B",
        "emb_dim": 4096,
        "model_type": "",
        "architectures": ["Aligner"],
    }
    (folder / "config.json").write_text(json.dumps(config))
    state = {
        k: v.to(torch.bfloat16)
        for k, v in tiny_aligner.state_dict().items()
        if k != "encoder.wav2vec2.masked_spec_embed"
    }
    prefix = "encoder.wav2vec2.encoder.pos_conv_embed.conv."
    state[prefix + "weight_g"] = state.pop(prefix + "parametrizations.weight.original0")
    state[prefix + "weight_v"] = state.pop(prefix + "parametrizations.weight.original1")
    save_file(state, str(folder / "model.safetensors"))
    original = aligner_mod.wav2vec2_large_config
    monkeypatch.setattr(aligner_mod, "wav2vec2_large_config", lambda vocab, **kw: original(vocab, **{**TINY_W2V, **kw}))
    loaded = Aligner.from_pretrained(folder, tokenizer=tiny_aligner.tokenizer)
    assert loaded.encoder_config.conv_bias is False
    expected = tiny_aligner.state_dict()[prefix + "parametrizations.weight.original1"].to(torch.bfloat16).float()
    assert torch.equal(loaded.state_dict()[prefix + "parametrizations.weight.original1"], expected)
    assert torch.count_nonzero(loaded.encoder.wav2vec2.masked_spec_embed) == 0


def test_aligner_forward(tiny_aligner):
    tokens = torch.tensor([[47, 75, 308, 312, 13]])
    out = tiny_aligner(torch.randn(1, 24000) * 0.1, text_tokens=tokens, return_logits=True)
    pos = out.token_positions[0].tolist()
    assert len(pos) == 5 and all(b > a for a, b in zip(pos, pos[1:])) and pos[0] >= 1
    assert out.token_masks.shape == (1, 50) and int(out.token_masks.sum()) == 5
    assert out.token_masks[0, out.token_positions[0] - 1].eq(1).all()
    assert out.logits.shape[:2] == (1, 49)


def test_aligner_too_long_fails_before_network(tiny_aligner, monkeypatch):
    def boom(*_a, **_k):
        raise AssertionError("network ran")

    monkeypatch.setattr(tiny_aligner, "logits", boom)
    with pytest.raises(TranscriptError, match="too long for the clip"):
        tiny_aligner.align(torch.randn(8000), torch.arange(30))  # 0.5 s = 24 frames


@pytest.mark.real_checkpoints
@pytest.mark.skipif(not os.environ.get("TADA_CODEC_DIR"), reason="set TADA_CODEC_DIR to a local tada-codec")
def test_real_aligner_loads():
    tok = os.environ.get("TADA_TOKENIZER_DIR")
    aligner = Aligner.from_pretrained(os.environ["TADA_CODEC_DIR"], "aligner", tokenizer=tok)
    assert aligner.encoder_config.hidden_size == 1024
    out = aligner.logits(torch.randn(1, 16000) * 0.1)
    assert out.shape[:2] == (1, 49)
