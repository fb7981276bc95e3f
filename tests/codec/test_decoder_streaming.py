"""The codec decoder: masks, block-cached attention, stateful waveform CNN, StreamingDecoder."""

import pytest
import torch

from tadastream.codec.decoder import Decoder, expand_tokens, frame_marks
from tadastream.codec.streaming import StreamingDecoder
from tadastream.config import DecoderConfig
from tadastream.nn.attention import BlockCache, BlockRun, decoder_attention_mask, encoder_attention_mask


def tiny_decoder(seed=0):
    torch.manual_seed(seed)
    config = DecoderConfig(
        embed_dim=16,
        hidden_dim=32,
        num_attn_layers=2,
        num_attn_heads=4,
        attn_dim_feedforward=64,
        wav_decoder_channels=32,
    )
    dec = Decoder(config).eval()
    with torch.no_grad():
        for name, p in dec.named_parameters():
            if name.endswith("alpha"):
                p.uniform_(0.5, 1.5)
            elif p.dim() > 1:
                p.normal_(0, 0.3)
    return dec


@pytest.fixture(scope="module")
def decoder():
    return tiny_decoder()


def utterance(seed=1, tokens=9, dim=16):
    g = torch.Generator().manual_seed(seed)
    vectors = torch.randn(tokens, dim, generator=g)
    time_before = torch.randint(1, 12, (tokens + 1,), generator=g)
    return vectors, time_before


def test_decoder_mask_own_and_previous_block():
    marks = torch.tensor([[0, 1, 0, 0, 1, 1, 0]])
    allowed = decoder_attention_mask(marks)[0].int()
    # blocks: [0,1] [2,3,4] [5] [6]
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0],
            [1, 1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 1, 0],
            [0, 0, 0, 0, 0, 1, 1],
        ]
    )
    assert torch.equal(allowed, expected)


def test_encoder_mask_rule():
    marks = torch.tensor([[0, 1, 0, 0, 1, 0]])
    a = encoder_attention_mask(marks)[0]
    # blocks open at marked frames: [0] [1,2,3] [4,5]
    assert a[2].tolist() == [False, False, True, True, False, False]  # unmarked: unmarked of own block
    assert a[1].tolist() == [True, True, True, True, False, False]  # marked: own block + prev unmarked
    assert a[4].tolist() == [False, False, True, True, True, True]
    assert a.diagonal().all()


def test_output_length_is_480_per_frame_minus_6(decoder):
    for frames in (1, 2, 7, 40):
        x = torch.randn(1, frames, 16)
        assert decoder(x).shape == (1, 1, 480 * frames - 6)


def test_block_attention_equals_full_pass(decoder):
    vectors, time_before = utterance()
    frames = expand_tokens(vectors, time_before).unsqueeze(0)
    marks = frame_marks(frames)
    full = decoder.hidden(frames, marks)
    cache, outs, start = BlockCache(), [], 0
    ends = (marks[0].nonzero().flatten() + 1).tolist() + [frames.shape[1]]
    with torch.no_grad():
        for end in ends:
            if end > start:
                x = decoder.decoder_proj(frames[0, start:end])
                run = BlockRun(0, [end - start], cache)
                outs.append(decoder.local_attention_decoder.forward_runs(x, [run]).unsqueeze(0))
            start = end
    assert (torch.cat(outs, 1) - full).abs().max() < 1e-5


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_wave_cnn_steps_equal_one_pass(decoder, chunk):
    x = torch.randn(1, 32, 23)
    cnn = decoder.wav_decoder
    with torch.no_grad():
        full = cnn(x)
        states = cnn.init_state()
        parts = [cnn.push(states, x[:, :, i : i + chunk]) for i in range(0, x.shape[2], chunk)]
        parts.append(cnn.flush(states, x))
    streamed = torch.cat(parts, 2)
    assert streamed.shape == full.shape
    assert (streamed - full).abs().max() < 1e-5


def test_wave_cnn_matches_plain_torch_convolutions(decoder):
    """The polyphase transposed conv and the carried-state convs equal torch's padded ops."""
    import math

    import torch.nn.functional as F

    cnn, x = decoder.wav_decoder, torch.randn(1, 32, 9)
    with torch.no_grad():
        y = cnn.model[0].forward(x)
        for block in list(cnn.model)[1:-3]:
            snake, up, *res = block.block
            y = snake(y)
            s = up.stride
            y = F.conv_transpose1d(y, up.weight(), up.bias, stride=s, padding=math.ceil(s / 2))
            for unit in res:
                y = y + unit.block(y)
        snake, conv, tanh = list(cnn.model)[-3:]
        ref = tanh(conv(snake(y)))
        assert (cnn(x) - ref).abs().max() < 1e-5


def test_streaming_decoder_equals_one_pass_with_skip(decoder):
    vectors, time_before = utterance(tokens=12)
    frames = expand_tokens(vectors, time_before)
    full = decoder(frames.unsqueeze(0))[0, 0]
    sd = StreamingDecoder(decoder, window_size=4, skip_leading_frames=5)
    chunks = [sd.decode_block(v, int(t)) for v, t in zip(vectors, time_before[:-1])]
    chunks.append(sd.flush(int(time_before[-1])))
    streamed = torch.cat(chunks)
    assert streamed.shape[0] == full.shape[0] - 5 * 480
    assert (streamed - full[5 * 480 :]).abs().max() < 1e-5
    assert sum(c.numel() > 0 for c in chunks) >= 3


def test_first_call_waits_for_the_cnn_look_ahead(decoder):
    needed = decoder.wav_decoder.frames_before_output(5 * 480)
    sd = StreamingDecoder(decoder, skip_leading_frames=5)
    out = []
    while sd.frames_in + 3 < needed:
        out.append(sd.decode_block(torch.randn(16), 3))
    assert sd.calls == 0 and not any(o.numel() for o in out)
    first = sd.decode_block(torch.randn(16), 3)
    assert sd.calls == 1 and first.numel() > 0


def test_first_audible_call_runs_the_cnn_only_as_far_as_its_first_sample_needs(decoder):
    needed = decoder.wav_decoder.frames_before_output(5 * 480)
    vectors, time_before = utterance(seed=5, tokens=6)
    time_before[0] = needed + 12  # one block reaching well past what the first sample needs
    sd = StreamingDecoder(decoder, skip_leading_frames=5)
    first = sd.decode_block(vectors[0], int(time_before[0]))
    cnn = decoder.wav_decoder
    cnn_alone = cnn.push(cnn.init_state(), torch.zeros(1, decoder.config.hidden_dim, needed))
    assert sd.calls == 1 and first.numel() == cnn_alone.shape[-1] - 5 * 480 > 0
    # the block's later frames come with the next call, and the audio is still the one-pass audio
    chunks = [first] + [sd.decode_block(v, int(t)) for v, t in zip(vectors[1:], time_before[1:-1])]
    chunks.append(sd.flush(int(time_before[-1])))
    full = decoder(expand_tokens(vectors, time_before).unsqueeze(0))[0, 0]
    assert (torch.cat(chunks) - full[5 * 480 :]).abs().max() < 1e-5


def test_streaming_buffers_until_lookahead_then_flush_releases_the_rest(decoder):
    sd = StreamingDecoder(decoder)
    first = sd.decode_block(torch.randn(16), 2)  # 2 frames: far less than the CNN's look-ahead
    assert first.numel() == 0 and sd.samples_out == 0
    tail = sd.flush(3)
    assert tail.numel() == 480 * 5 - 6
    with pytest.raises(RuntimeError, match="reset"):
        sd.decode_block(torch.randn(16), 2)


def test_reset_makes_decoder_reusable_and_window_does_not_change_audio(decoder):
    vectors, time_before = utterance(seed=3)

    def run(sd):
        out = [sd.decode_block(v, int(t)) for v, t in zip(vectors, time_before[:-1])]
        return torch.cat(out + [sd.flush(int(time_before[-1]))])

    sd = StreamingDecoder(decoder, window_size=1)
    a = run(sd)
    sd.reset()
    b = run(sd)
    c = run(StreamingDecoder(decoder, window_size=1000))
    assert torch.equal(a, b)
    assert (a - c).abs().max() < 1e-5


def _state_numel(sd):
    total = sum(t.numel() for kv in (sd._cache.kv or []) for t in kv)

    def walk(obj):
        n = 0
        if isinstance(obj, torch.Tensor):
            return obj.numel()
        if isinstance(obj, (list, tuple)):
            return sum(walk(o) for o in obj)
        if hasattr(obj, "__dict__"):
            return sum(walk(v) for v in vars(obj).values())
        return n

    return total + walk(sd._cnn)


def test_state_does_not_grow_with_length(decoder):
    sd = StreamingDecoder(decoder)
    sizes = []
    for i in range(60):
        sd.decode_block(torch.randn(16), 4)
        if i in (10, 59):
            sizes.append(_state_numel(sd))
    assert sizes[0] == sizes[1] > 0


def test_invalid_window():
    with pytest.raises(ValueError, match="window_size"):
        StreamingDecoder(tiny_decoder(), window_size=0)


def test_weight_norm_cache_follows_weight_changes(decoder):
    conv = decoder.wav_decoder.model[0]
    x = torch.randn(1, 32, 10)
    before = conv(x)
    with torch.no_grad():
        conv.parametrizations.weight.original0.mul_(2.0)
    after = conv(x)
    assert not torch.allclose(before, after)
    with torch.no_grad():
        conv.parametrizations.weight.original0.div_(2.0)
    assert torch.allclose(conv(x), before)


def test_save_and_load_roundtrip_and_key_errors(tmp_path, decoder):
    from safetensors.torch import load_file, save_file

    from tadastream.hub import CheckpointError

    decoder.save_pretrained(tmp_path / "decoder")
    loaded = Decoder.from_pretrained(tmp_path)  # finds the decoder/ subfolder
    x = torch.randn(1, 6, 16)
    assert torch.equal(loaded(x), decoder(x))
    state = load_file(str(tmp_path / "decoder" / "model.safetensors"))
    state["local_attention_decoder.layers.0.self_attn.rope_freqs"] = torch.zeros(8, 4, 2)
    save_file(state, str(tmp_path / "decoder" / "model.safetensors"))
    Decoder.from_pretrained(tmp_path / "decoder")  # stored buffers are tolerated
    del state["decoder_proj.weight"]
    save_file(state, str(tmp_path / "decoder" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="decoder_proj.weight"):
        Decoder.from_pretrained(tmp_path / "decoder")
    state["decoder_proj.weight"] = torch.zeros(3, 3)
    save_file(state, str(tmp_path / "decoder" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="decoder_proj.weight.*shape"):
        Decoder.from_pretrained(tmp_path / "decoder")


def test_calls_grow_after_first_audio_and_chunking_is_deterministic(decoder):
    vectors, time_before = utterance(seed=5, tokens=40)

    def run(window):
        sd = StreamingDecoder(decoder, window_size=window)
        out = [sd.decode_block(v, int(t)) for v, t in zip(vectors, time_before[:-1])]
        out.append(sd.flush(int(time_before[-1])))
        return out, sd.calls

    chunks, calls = run(64)
    assert calls < len(vectors) / 2  # doubling calls, not one per token
    again, _ = run(64)
    assert [c.numel() for c in chunks] == [c.numel() for c in again]  # timing never changes the chunks
    assert all(torch.equal(a, b) for a, b in zip(chunks, again))  # nor the samples
    small, small_calls = run(1)
    assert small_calls > calls  # a small window keeps chunks near one token
    assert (torch.cat(chunks) - torch.cat(small)).abs().max() < 1e-5


def test_whole_utterance_decode_is_windowed_one_pass(decoder):
    vectors, time_before = utterance(seed=6, tokens=30)
    frames = expand_tokens(vectors, time_before)
    full = decoder(frames.unsqueeze(0))[0, 0]
    sd = StreamingDecoder(decoder, window_size=32, skip_leading_frames=6)
    audio = sd.decode(frames)
    assert audio.shape[0] == full.shape[0] - 6 * 480
    assert (audio - full[6 * 480 :]).abs().max() < 1e-5
    assert sd.calls <= frames.shape[0] // 32 + 3  # about one call per window, not one per token


@pytest.mark.parametrize("group", [1, 2, 5])
def test_grouped_block_attention_equals_full_pass(decoder, group):
    vectors, time_before = utterance(seed=9, tokens=11)
    frames = expand_tokens(vectors, time_before).unsqueeze(0)
    marks = frame_marks(frames)
    full = decoder.hidden(frames, marks)
    ends = (marks[0].nonzero().flatten() + 1).tolist() + [frames.shape[1]]
    lengths = [b - a for a, b in zip([0] + ends[:-1], ends) if b > a]
    cache, outs, start = BlockCache(), [], 0
    with torch.no_grad():
        for i in range(0, len(lengths), group):
            sizes = lengths[i : i + group]
            x = decoder.decoder_proj(frames[0, start : start + sum(sizes)])
            outs.append(decoder.local_attention_decoder.forward_runs(x, [BlockRun(0, sizes, cache)]).unsqueeze(0))
            start += sum(sizes)
    assert (torch.cat(outs, 1) - full).abs().max() < 1e-5
