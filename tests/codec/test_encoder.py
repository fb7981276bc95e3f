"""Codec encoder, encoded-voice files and the prompt pipeline (tiny random models, no network)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file, save_file

from tadastream.audio import AudioError
from tadastream.codec.aligner import Aligner, TranscriptError, wav2vec2_large_config
from tadastream.codec.encoder import Encoder, EncoderOutput, VoiceFileError, aligner_subfolder, finish_transcript
from tadastream.config import AlignerConfig, EncoderConfig
from tadastream.hub import CheckpointError
from tests.helpers.paths import TINY_TOKENIZER

TINY = dict(hidden_dim=64, embed_dim=32, num_attn_layers=2, num_attn_heads=4, attn_dim_feedforward=128)
TINY_W2V = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=[16] * 7,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
)
TEXT = "Please call Stella."


def _tiny_config(**changes) -> EncoderConfig:
    """Tiny transformer and a narrow waveform CNN (base width 8 instead of 64) to keep tests fast."""
    return EncoderConfig.from_dict({**TINY, "wav_encoder_base_channels": 8, **changes})


def _speech(seconds: float = 0.5, rate: int = 24000, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    n = int(seconds * rate)
    t = torch.arange(n) / rate
    return 0.3 * torch.sin(2 * torch.pi * 220 * t) + 0.05 * torch.randn(n, generator=gen)


@pytest.fixture(scope="module")
def codec_dir(tmp_path_factory) -> Path:
    """A codec folder with encoder/ and aligner/ (plus aligner-de/) from tiny random models."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("codec")
    tok = AutoTokenizer.from_pretrained(str(TINY_TOKENIZER))
    torch.manual_seed(0)
    Encoder(_tiny_config()).save_pretrained(root / "encoder")
    w2v = wav2vec2_large_config(len(tok), **TINY_W2V)
    Aligner(AlignerConfig(), tokenizer=tok, wav2vec2_config=w2v).save_pretrained(root / "aligner")
    Aligner(AlignerConfig(), tokenizer=tok, wav2vec2_config=w2v).save_pretrained(root / "aligner-de")
    return root


@pytest.fixture(scope="module")
def encoder(codec_dir) -> Encoder:
    return Encoder.from_pretrained(codec_dir)


@pytest.fixture(scope="module")
def encoded(encoder) -> EncoderOutput:
    torch.manual_seed(123)
    return encoder(_speech(), text=TEXT)


def _forbid_models(monkeypatch, encoder: Encoder) -> None:
    def boom(*_a, **_k):
        raise AssertionError("a model ran before the input was validated")

    monkeypatch.setattr(encoder, "encode_frames", boom)
    monkeypatch.setattr(encoder, "transcribe", boom)
    monkeypatch.setattr(Aligner, "logits", boom)


# ---- structure and checkpoints --------------------------------------------------------------


def test_key_names_and_shapes_follow_reference():
    state = Encoder(EncoderConfig(**TINY)).state_dict()
    assert state["wav_encoder.block.0.parametrizations.weight.original1"].shape == (64, 1, 7)
    assert state["wav_encoder.block.1.block.0.block.1.parametrizations.weight.original1"].shape == (64, 64, 7)
    assert state["wav_encoder.block.1.block.2.block.3.parametrizations.weight.original0"].shape == (64, 1, 1)
    assert state["wav_encoder.block.1.block.3.alpha"].shape == (1, 64, 1)
    assert state["wav_encoder.block.1.block.4.parametrizations.weight.original1"].shape == (128, 64, 12)
    assert state["wav_encoder.block.4.block.4.parametrizations.weight.original1"].shape == (1024, 512, 8)
    assert state["wav_encoder.block.5.alpha"].shape == (1, 1024, 1)
    assert state["wav_encoder.block.6.parametrizations.weight.original1"].shape == (64, 1024, 3)
    assert state["local_attention_encoder.layers.1.self_attn.qkv.weight"].shape == (192, 64)
    assert state["local_attention_encoder.layers.0.ffn.3.weight"].shape == (64, 128)
    assert "local_attention_encoder.final_norm.weight" in state
    assert state["hidden_linear.weight"].shape == (32, 64)
    assert state["pos_emb.weight"].shape == (2, 64)
    same = Encoder(EncoderConfig(**{**TINY, "embed_dim": 64}))
    assert isinstance(same.hidden_linear, torch.nn.Identity)


def test_frame_count():
    enc = Encoder(_tiny_config()).eval()
    with torch.no_grad():
        hidden, marks = enc.encode_frames(torch.zeros(1, 24000), torch.zeros(1, 10))
    assert hidden.shape == (1, 52, 32) and marks.shape == (1, 52)  # (24000 + 960) / 480
    assert enc.state_dict()["wav_encoder.block.0.parametrizations.weight.original1"].shape == (8, 1, 7)
    assert enc.state_dict()["wav_encoder.block.6.parametrizations.weight.original1"].shape == (64, 128, 3)


def test_round_trip_and_lazy_aligner(tmp_path, codec_dir, encoder):
    assert encoder._aligner is None
    again = Encoder.from_pretrained(codec_dir / "encoder")  # the component folder itself works too
    for key, value in encoder.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    positions = torch.tensor([[3, 9, 17]])
    a = encoder(_speech(), text_tokens=[[5, 6, 7]], token_positions=positions, sample=False)
    b = again(_speech(), text_tokens=[[5, 6, 7]], token_positions=positions, sample=False)
    assert torch.equal(a.token_values, b.token_values)
    assert encoder._aligner is None and again._aligner is None  # never needed
    assert again.aligner.encoder_config.hidden_size == 32  # found as a sibling of encoder/
    bare = Encoder(_tiny_config())
    with pytest.raises(CheckpointError, match="no aligner"):
        _ = bare.aligner
    bare.aligner = again.aligner
    assert bare.aligner is again.aligner
    assert not any(k.startswith(("aligner", "_aligner")) for k in bare.state_dict())


def test_reference_saved_folder_loads(tmp_path):
    """Reference config keys, bf16 weights and the stored rope/mask buffers are all accepted."""
    torch.manual_seed(1)
    src = Encoder(_tiny_config())
    folder = tmp_path / "encoder"
    folder.mkdir()
    config = {
        **TINY,
        "strides": [6, 5, 4, 4],
        "attn_dropout": 0.1,
        "dist_type": "fixed",
        "block_attention": "v2",
        "num_frames_per_second": 50,
        "std": 0.5,
        "acoustic_mean": 0.0,
        "acoustic_std": 1.5,
        "architectures": ["Encoder"],
        "model_type": "",
        "torch_dtype": "bfloat16",
        "transformers_version": "4.57.1",
        "wav_encoder_base_channels": 8,
    }
    (folder / "config.json").write_text(json.dumps(config))
    state = {k: v.to(torch.bfloat16) for k, v in src.state_dict().items()}
    for i in range(TINY["num_attn_layers"]):
        state[f"local_attention_encoder.layers.{i}.self_attn.rope_freqs"] = torch.zeros(64, 8, 2)
        state[f"local_attention_encoder.layers.{i}._precomputed_mask"] = torch.ones(64, 64, dtype=torch.bool)
    save_file(state, str(folder / "model.safetensors"))
    loaded = Encoder.from_pretrained(folder)
    assert loaded.config.extra["attn_dropout"] == 0.1
    key = "hidden_linear.weight"
    assert torch.equal(loaded.state_dict()[key], src.state_dict()[key].to(torch.bfloat16).float())


def test_missing_and_misshaped_keys(tmp_path):
    folder = Encoder(_tiny_config()).save_pretrained(tmp_path / "encoder")
    state = load_file(str(folder / "model.safetensors"))
    key = "wav_encoder.block.2.block.1.block.1.parametrizations.weight.original0"
    save_file({k: v for k, v in state.items() if k != key}, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        Encoder.from_pretrained(folder)
    state["pos_emb.weight"] = torch.zeros(3, 64)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"pos_emb\.weight"):
        Encoder.from_pretrained(folder)


def test_language_picks_aligner(codec_dir):
    assert aligner_subfolder(None) == "aligner" and aligner_subfolder("de") == "aligner-de"
    assert aligner_subfolder("zh") == aligner_subfolder("ch") == "aligner-ch", "zh is the codec's ch"
    with pytest.raises(ValueError, match="en, ar, zh, de, es, fr, it, ja, pl, pt"):
        Encoder.from_pretrained(codec_dir, language="xx")
    german = Encoder.from_pretrained(codec_dir, language="de")
    assert german._aligner is None and german.language == "de"
    expected = Aligner.from_pretrained(codec_dir, "aligner-de").state_dict()["encoder.lm_head.weight"]
    assert torch.equal(german.aligner.state_dict()["encoder.lm_head.weight"], expected)
    with pytest.raises(CheckpointError, match="aligner-fr"):
        _ = Encoder.from_pretrained(codec_dir, language="fr").aligner


# ---- the pipeline -----------------------------------------------------------------------------


def test_encode_with_text_end_to_end(encoder, encoded):
    out = encoded
    n_tokens = len(encoder.tokenizer.encode(out.text[0], add_special_tokens=False))
    assert out.text == ["Please call stella."]  # normalised as the reference does
    assert out.text_tokens.shape == (1, n_tokens) and out.text_tokens_len.tolist() == [n_tokens]
    assert out.token_values.shape == (1, n_tokens, 32)
    assert out.encoded_expanded.shape == (1, 27, 32) and out.token_masks.shape == (1, 27)
    assert out.audio.shape == (1, 12000) and out.audio_len.tolist() == [12000] and out.sample_rate == 24000
    pos = out.token_positions[0]
    assert torch.all(pos[1:] > pos[:-1]) and int(out.token_masks.sum()) == n_tokens
    assert out.token_masks[0, pos - 1].eq(1).all()
    # marked frames carry noise, unmarked frames are zero; values are the normalised marked frames
    marked = out.token_masks[0].bool()
    assert torch.count_nonzero(out.encoded_expanded[0, ~marked]) == 0
    assert not torch.equal(out.encoded_expanded, out.non_sampled_encoded_expanded)
    assert torch.allclose(out.token_values[0], out.encoded_expanded[0, pos - 1] / 1.5)


def test_sampling_follows_global_seed(encoder, encoded):
    torch.manual_seed(123)
    again = encoder(_speech(), text=TEXT)
    assert torch.equal(again.token_values, encoded.token_values)
    plain = encoder(_speech(), text=TEXT, sample=False)
    assert torch.equal(plain.encoded_expanded, encoded.non_sampled_encoded_expanded)
    noise = encoded.encoded_expanded - encoded.non_sampled_encoded_expanded
    assert 0.35 < float(noise[encoded.token_masks.bool()].std()) < 0.65  # std 0.5


def test_multichannel_and_16k_input(encoder):
    mono = _speech()
    stereo = torch.stack([mono + 0.01, mono - 0.01])
    a = encoder(stereo, text=TEXT, sample=False)
    b = encoder(mono, text=TEXT, sample=False)
    assert torch.allclose(a.token_values, b.token_values, atol=1e-5)
    slow = encoder(_speech(rate=16000), text=TEXT, sample_rate=16000, sample=False)
    assert slow.audio.shape == (1, 12000) and slow.audio_len.tolist() == [12000]
    assert slow.token_values.shape == b.token_values.shape


def test_file_path_input(tmp_path, encoder):
    path = tmp_path / "prompt.wav"
    clip = _speech(rate=16000)
    sf.write(str(path), np.stack([clip.numpy(), clip.numpy()], axis=1), 16000)
    out = encoder(path, text=TEXT, sample=False)
    assert out.audio.shape == (1, 12000)


def test_batch_list_input(encoder):
    out = encoder([_speech(0.5), _speech(0.3, seed=1)], text=[TEXT, "Six spoons."], sample=False)
    single = encoder(_speech(0.3, seed=1), text="Six spoons.", sample=False)
    n = int(single.text_tokens_len[0])
    assert out.audio_len.tolist() == [12000, 7200]
    assert torch.allclose(out.token_values[1, :n], single.token_values[0], atol=1e-5)


@pytest.mark.parametrize(
    "audio, message",
    [
        (torch.zeros(12000), "silent"),
        (torch.full((12000,), float("nan")), "NaN"),
        (torch.ones(100) * 0.1, "shorter than one 20 ms"),
    ],
)
def test_bad_audio_fails_before_models(monkeypatch, encoder, audio, message):
    _forbid_models(monkeypatch, encoder)
    with pytest.raises(AudioError, match=message):
        encoder(audio, text=TEXT)


def test_bad_text_fails_before_models(monkeypatch, encoder):
    _forbid_models(monkeypatch, encoder)
    for text in ("", "   \n"):
        with pytest.raises(TranscriptError, match="empty"):
            encoder(_speech(), text=text)
    with pytest.raises(TranscriptError, match="too long for the clip or does not match it"):
        encoder(_speech(0.1), text=TEXT * 3)


def test_transcribes_without_text(monkeypatch, encoder):
    seen = []

    def fake_asr(clips):
        seen.extend(clips)
        return [finish_transcript("  please call stella  ")]

    monkeypatch.setattr(encoder, "transcribe", fake_asr)
    out = encoder(_speech(), sample=False)
    assert out.text == ["Please call stella."]
    assert seen[0].shape == (8000,)  # 16 kHz for the ASR
    assert finish_transcript("done!") == "done!"
    with pytest.raises(TranscriptError):
        finish_transcript("   ")


# ---- encoded-voice files ----------------------------------------------------------------------


def test_voice_file_round_trip_is_bit_exact(tmp_path, encoded):
    voice = encoded.to(dtype=torch.bfloat16)
    assert voice.token_values.dtype == torch.bfloat16 and voice.token_positions.dtype == torch.long
    path = voice.save(tmp_path / "voice.safetensors")
    assert not list(tmp_path.glob(".*.tmp"))
    back = EncoderOutput.load(path)
    assert back.text == voice.text and back.sample_rate == voice.sample_rate
    for name in EncoderOutput.__dataclass_fields__:
        a, b = getattr(voice, name), getattr(back, name)
        if isinstance(a, torch.Tensor):
            assert a.dtype == b.dtype and torch.equal(a, b), name
        else:
            assert a == b, name
    empty = EncoderOutput.empty("cpu")
    empty.save(tmp_path / "empty.safetensors")
    assert EncoderOutput.load(tmp_path / "empty.safetensors").token_values.shape == (1, 0, 512)


def test_voice_file_records_its_language(tmp_path, encoded):
    from tadastream.codec.encoder import voice_language

    assert encoded.language == "en", "an encoder loaded with the English aligner"
    plain = dataclasses.replace(encoded, language=None).save(tmp_path / "plain.voice")
    assert EncoderOutput.load(plain).language is None and voice_language(plain) is None
    ja = dataclasses.replace(encoded, language="ja").save(tmp_path / "ja.voice")
    assert EncoderOutput.load(ja).language == "ja" and voice_language(ja) == "ja"
    assert voice_language(tmp_path / "missing.voice") is None
    with pytest.raises(ValueError, match="unknown language 'xx'"):
        dataclasses.replace(encoded, language="xx").save(tmp_path / "xx.voice")
    assert not (tmp_path / "xx.voice").exists()


def test_voice_file_rejects_other_files(tmp_path, encoded):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"definitely not a voice")
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(plain))
    pickled = tmp_path / "voice.pt"
    torch.save({"token_values": torch.zeros(1)}, pickled)
    cases = [
        (junk, "not an encoded voice"),
        (plain, "without encoded-voice metadata"),
        (pickled, "pickle"),
        (tmp_path / "missing.safetensors", "not found"),
    ]
    for path, message in cases:
        with pytest.raises(VoiceFileError, match=message) as info:
            EncoderOutput.load(path)
        assert "\n" not in str(info.value)
    damaged = tmp_path / "damaged.safetensors"
    tensors = {k: v for k, v in encoded._tensor_fields().items() if k != "token_positions"}
    save_file(
        {k: v.contiguous().clone() for k, v in tensors.items()},
        str(damaged),
        metadata={"format": "tadastream.encoder_output", "version": "1", "text": '["x"]', "sample_rate": "24000"},
    )
    with pytest.raises(VoiceFileError, match="token_positions"):
        EncoderOutput.load(damaged)


def _damaged(voice: EncoderOutput, **changes) -> EncoderOutput:
    return dataclasses.replace(
        voice, **{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in changes.items()}
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda v: {"token_values": v.token_values.index_fill(1, torch.tensor([0]), float("nan"))},
            "token_values holds NaN",
        ),
        (lambda v: {"audio": v.audio.index_fill(1, torch.tensor([3]), float("inf"))}, "audio holds NaN or infinite"),
        (lambda v: {"token_positions": v.token_positions.flip(1)}, "not strictly increasing"),
        (lambda v: {"token_positions": v.token_positions.float()}, "must be integers"),
        (lambda v: {"token_positions": -v.token_positions}, "negative frames"),
        (lambda v: {"audio_len": v.audio_len + v.audio.shape[-1]}, "audio_len is outside"),
        (lambda v: {"text_tokens": v.text_tokens - 10_000}, "negative ids"),
        (lambda v: {"text_tokens_len": v.text_tokens_len + 99}, "text_tokens_len is outside"),
    ],
)
def test_voice_files_with_inconsistent_tensors_are_refused(tmp_path, encoded, change, message):
    voice = _damaged(encoded, **change(encoded))
    assert message in voice.problem()
    path = voice.save(tmp_path / "bad.voice")
    with pytest.raises(VoiceFileError, match=message) as info:
        EncoderOutput.load(path)
    assert info.value.reason and message in info.value.reason
    assert encoded.problem() is None


def test_output_to_and_alignment_text(encoder, encoded):
    half = encoded.to(dtype=torch.float16)
    assert half.audio.dtype == torch.float16 and half.token_masks.dtype == torch.long
    assert encoded.token_values.dtype == torch.float32  # the original is untouched
    text = encoded.alignment_text(encoder.tokenizer)
    assert text.startswith(f"{encoded.token_positions.shape[1]} tokens | 0.50s audio")


@pytest.mark.real_checkpoints
@pytest.mark.skipif(not os.environ.get("TADA_CODEC_DIR"), reason="set TADA_CODEC_DIR to a local tada-codec")
def test_real_encoder():
    enc = Encoder.from_pretrained(os.environ["TADA_CODEC_DIR"], tokenizer=os.environ.get("TADA_TOKENIZER_DIR"))
    assert enc.config.hidden_dim == 1024
    positions = torch.tensor([[10, 30, 60, 90]])
    out = enc(_speech(2.0), text_tokens=[[1, 2, 3, 4]], token_positions=positions, sample=False)
    assert out.token_values.shape == (1, 4, 512) and out.encoded_expanded.shape == (1, 102, 512)
    if os.environ.get("TADA_TOKENIZER_DIR"):
        out = enc(_speech(2.0), text="Hello there.")
        assert out.token_values.shape[-1] == 512
