"""Decode calls of many streams computed together (codec/batch.py): each stream's audio is its own."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tadastream.codec import batch
from tadastream.codec.batch import CNN_PIECE_FRAMES, batch_invariance, decode_calls, pieces
from tadastream.codec.streaming import StreamingDecoder

from .test_decoder_streaming import tiny_decoder


@pytest.fixture(scope="module")
def decoder():
    return tiny_decoder()


def script(seed: int, tokens: int, dim: int = 16) -> list[tuple[torch.Tensor, int]]:
    """A stream's tokens: (vector, frames before it), durations 1-11 frames."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(dim, generator=g), int(torch.randint(1, 12, (1,), generator=g))) for _ in range(tokens)]


def alone(decoder, tokens, trailing=3, window=100) -> torch.Tensor:
    sd = StreamingDecoder(decoder, window)
    return torch.cat([sd.decode_block(v, b) for v, b in tokens] + [sd.flush(trailing)])


def together(decoder, jobs, window=100, device="cpu"):
    """Streams that join at ``start`` ticks, push one token a tick and flush after their last; each
    tick's due calls go through one decode_calls. Returns (audio per stream, streams per call)."""
    streams = [StreamingDecoder(decoder, window, deferred=True) for _ in jobs]
    audio: list[list[torch.Tensor]] = [[] for _ in jobs]
    sizes, tick = [], 0
    while not all(s.finished for s in streams):
        for s, (start, tokens) in zip(streams, jobs):
            k = tick - start
            if 0 <= k < len(tokens):
                vector, before = tokens[k]
                assert not s.decode_block(vector.to(device), before).numel()  # deferred: nothing computed
            elif k == len(tokens):
                s.flush(3)
        due = [(i, call) for i, s in enumerate(streams) if (call := s.take_call()) is not None]
        if due:
            decode_calls(decoder, [call for _, call in due])
            sizes.append(len(due))
            for i, call in due:
                audio[i].append(streams[i].complete(call).cpu())
        tick += 1
        assert tick < 500
    return [torch.cat(a) for a in audio], sizes


JOBS = [(0, 30), (0, 30), (2, 17), (5, 40), (9, 3), (11, 25)]  # (tick it joins, tokens)


def test_streams_joining_leaving_and_flushing_each_get_their_own_audio(decoder):
    jobs = [(start, script(10 + i, n)) for i, (start, n) in enumerate(JOBS)]
    got, sizes = together(decoder, jobs)
    assert max(sizes) >= 3, "calls of several streams were batched"
    for (_, tokens), audio in zip(jobs, got):
        # batch_invariance() falls back to stream-by-stream parts where a batch would round differently
        assert torch.equal(audio, alone(decoder, tokens))


def test_fully_batched_math_is_each_streams_own_within_float_rounding(decoder, monkeypatch):
    # every part batched, whatever this CPU's kernels do with a batch (what CUDA does)
    monkeypatch.setattr(batch, "batch_invariance", lambda decoder: (True, True))
    jobs = [(start, script(20 + i, n)) for i, (start, n) in enumerate(JOBS)]
    got, _ = together(decoder, jobs, window=24)
    for (_, tokens), audio in zip(jobs, got):
        expected = alone(decoder, tokens, window=24)
        assert audio.shape == expected.shape and (audio - expected).abs().max() <= 1e-5


def test_a_tail_comes_in_calls_no_longer_than_the_streams_current_ones(decoder):
    sd = StreamingDecoder(decoder, window_size=64, deferred=True)
    for vector, before in script(3, 12):  # audio flows: calls have grown past 8 frames
        sd.decode_block(vector, before)
        if (call := sd.take_call()) is not None:
            decode_calls(decoder, [call])
            sd.complete(call)
    for vector, _ in script(4, 30):
        sd.decode_block(vector, 6)  # 180 frames queued (nobody took the calls due meanwhile)
    sd.flush(40)
    sizes = []
    while True:
        limit = max(sd._next_call_frames, StreamingDecoder.FIRST_FLOWING_CALL_FRAMES)
        if (call := sd.take_call()) is None:
            break
        assert sd.take_call() is None, "one call at a time"
        decode_calls(decoder, [call])
        sd.complete(call)
        sizes.append(call.block_frames)
        assert call.block_frames <= max(limit, 40)  # the 40 trailing frames are one block
    assert sd.finished and sd.idle and len(sizes) >= 4 and max(sizes) <= 64
    assert sum(sizes) >= 30 * 6 + 40  # and what the first tokens left queued


def test_complete_takes_only_the_call_it_gave(decoder):
    sd = StreamingDecoder(decoder, deferred=True)
    for vector, before in script(5, 8):
        sd.decode_block(vector, before)
    call = sd.take_call()
    assert call is not None and not sd.idle
    decode_calls(decoder, [call])
    with pytest.raises(RuntimeError, match="take_call"):
        StreamingDecoder(decoder, deferred=True).complete(call)
    assert sd.complete(call).numel() > 0 and sd.idle


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 200))
def test_pieces_are_powers_of_two_that_add_up(frames):
    got = pieces(frames)
    assert sum(got) == frames and got == sorted(got, reverse=True)
    assert all(p <= CNN_PIECE_FRAMES and p & (p - 1) == 0 for p in got)
    assert len(got) <= frames // CNN_PIECE_FRAMES + 5


def test_stacked_states_unstack_to_the_same_states(decoder):
    cnn = decoder.wav_decoder
    states = [cnn.init_state() for _ in range(3)]
    for s in states:  # same lengths pushed, different numbers: equal shapes, different states
        cnn.push(s, torch.randn(1, decoder.config.hidden_dim, 5))
    signature = cnn.state_signature(states[0])
    assert all(cnn.state_signature(s) == signature for s in states)
    back = cnn.unstack_states(cnn.stack_states(states), 3)
    for before, after in zip(states, back):
        x = torch.randn(1, decoder.config.hidden_dim, 4)
        assert torch.equal(cnn.push(before, x), cnn.push(after, x))


def test_batch_invariance_is_measured_once_per_decoder_and_dtype(decoder, monkeypatch):
    calls = []
    real = batch._stacking_invariant
    monkeypatch.setattr(batch, "_stacking_invariant", lambda d: calls.append(1) or real(d))
    fresh = tiny_decoder(seed=7)
    first = batch_invariance(fresh)
    assert batch_invariance(fresh) == first and len(calls) == 1
    assert all(isinstance(flag, bool) for flag in first)


def test_decode_shapes_are_a_bounded_set(decoder):
    """oneDNN keeps a kernel per shape: over many streams and lengths the transformer's row counts
    are multiples of 16 and the CNN's pieces powers of two."""
    rows, lengths = set(), set()
    hook = decoder.decoder_proj.register_forward_pre_hook(lambda m, args: rows.add(args[0].shape[0]))
    real_push = decoder.wav_decoder.push

    def push(states, x):
        lengths.add(x.shape[2])
        return real_push(states, x)

    decoder.wav_decoder.push = push
    try:
        jobs = [(i, script(40 + i, 10 + 7 * i)) for i in range(5)]
        together(decoder, jobs)
    finally:
        hook.remove()
        del decoder.wav_decoder.push
    assert rows and all(r % 16 == 0 for r in rows)
    assert lengths <= {1, 2, 4, 8, 16, 32}


@pytest.mark.gpu
def test_batched_decoding_on_cuda_is_each_streams_own_within_float_rounding():
    decoder = tiny_decoder().to("cuda")
    assert batch_invariance(decoder) == (True, True)  # CUDA batches every part
    jobs = [(start, script(30 + i, n)) for i, (start, n) in enumerate(JOBS)]
    got, sizes = together(decoder, jobs, device="cuda")
    assert max(sizes) >= 3
    for (_, tokens), audio in zip(jobs, got):
        expected = alone(decoder, [(v.cuda(), b) for v, b in tokens]).cpu()
        assert audio.shape == expected.shape and (audio - expected).abs().max() <= 1e-5
