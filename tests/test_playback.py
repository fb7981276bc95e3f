"""What a listener hears: playback figures, the first-chunk hold, the decoder's call schedule, and
streams of the demo model that a player starting on their first chunk plays through."""

from __future__ import annotations

import math
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tadastream import GenerationInputError, demo
from tadastream.codec.streaming import StreamingDecoder
from tadastream.config import SAMPLE_RATE
from tadastream.generation.options import check_min_first_chunk_ms
from tadastream.limits import MAX_FIRST_CHUNK_MS
from tadastream.playback import (
    FRAMES_PER_TOKEN_SPREAD,
    WAIT_MARGIN,
    WAIT_SLACK,
    FirstChunkHold,
    Playback,
    playable_start,
    playback_figures,
    plays_through,
    simulate_playback,
)

SPF = SAMPLE_RATE // 50  # samples per codec frame


def stall_from(start: float, times, seconds) -> float:
    """Seconds a player that starts at ``start`` waits for audio (independent of the module under test).

    The player reaches the audio of chunk ``i`` (which begins after the audio of the chunks before
    it) at ``start + before + stalled``; if the chunk is not there yet, it waits for it. Starting
    before the first chunk has arrived counts as waiting too."""
    stalled, before = 0.0, 0.0
    for ready, secs in zip(times, seconds):
        reach = start + before + stalled
        if ready > reach:
            stalled += ready - reach
        before += secs
    return stalled


# -- playable_start / simulate_playback / playback_figures -------------------------------------------


def test_chunks_ahead_of_playback_are_playable_at_once():
    times, seconds = [1.0, 1.5, 2.0], [1.0, 1.0, 1.0]
    assert playable_start(times, seconds) == 1.0
    play = simulate_playback(times, seconds)
    assert play.stalls == [] and play.stall_time == 0.0
    assert play.wall[0] == 1.0 and play.wall[-1] == 4.0 and play.audio[-1] == 3.0


def test_a_late_chunk_sets_the_playable_start():
    # chunk 1 arrives at 3.0 s behind 1 s of audio: a player must start by 3.0 - 1.0 = 2.0 s; one
    # that starts on the first chunk (1.0 s) runs dry at 2.0 s and waits until 3.0 s
    times, seconds = [1.0, 3.0], [1.0, 1.0]
    assert playable_start(times, seconds) == 2.0
    play = simulate_playback(times, seconds)
    assert play.stalls == [(2.0, 3.0)] and play.stall_time == 1.0
    assert play.wall == [1.0, 2.0, 3.0, 4.0] and play.audio == [0.0, 1.0, 1.0, 2.0]


def test_the_latest_chunk_relative_to_its_audio_decides():
    # audio before each chunk: 0, 0.25, 0.75, 2.25; arrival minus that: 0, 0.25, 1.75, 0.75 -> 1.75
    times, seconds = [0.0, 0.5, 2.5, 3.0], [0.25, 0.5, 1.5, 1.0]
    assert playable_start(times, seconds) == 1.75
    play = simulate_playback(times, seconds)
    assert play.stalls == [(0.25, 0.5), (1.0, 2.5)]  # two waits, 1.75 s in all: the buffering needed
    assert play.stall_time == 1.75 and play.wall[-1] == 5.0


def test_no_chunks():
    assert playable_start([], []) is None
    play = simulate_playback([], [])
    assert play == Playback([], [], []) and play.stall_time == 0.0
    figures = playback_figures([], [])
    assert figures.time_to_first_audio is None and figures.time_to_playable_audio is None
    assert figures.stall_count == 0 and figures.stall_time == 0.0 and figures.buffering == 0.0


def test_playback_figures_use_the_sample_rate():
    # 1 000 samples at 1 kHz is 1 s: the chunk at 2.0 s is 1 s late
    figures = playback_figures([0.0, 2.0], [1000, 1000], sample_rate=1000)
    assert figures.time_to_first_audio == 0.0 and figures.time_to_playable_audio == 1.0
    assert figures.stall_count == 1 and figures.stall_time == 1.0 and figures.buffering == 1.0
    # the same counts at 24 kHz hold 1/24 s each
    at_24k = playback_figures([0.0, 2.0], [1000, 1000])
    assert at_24k.time_to_playable_audio == pytest.approx(2.0 - 1000 / 24000)


# Dyadic times and durations (multiples of 1/1024 s) add up exactly in floating point, so the
# figures can be compared exactly.
dyadic_chunks = st.integers(1, 30).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 4096), min_size=n, max_size=n),  # gaps between arrivals (0: same moment)
        st.lists(st.integers(1, 4096), min_size=n, max_size=n),  # durations
    )
)


@settings(max_examples=300, deadline=None)
@given(dyadic_chunks)
def test_starting_at_playable_start_never_stalls_and_earlier_does(chunks):
    gaps, lengths = chunks
    times = [sum(gaps[: i + 1]) / 1024 for i in range(len(gaps))]
    seconds = [n / 1024 for n in lengths]
    playable = playable_start(times, seconds)
    assert playable is not None and times[0] <= playable <= times[-1]
    assert stall_from(playable, times, seconds) == 0.0
    # Starting earlier by any amount waits exactly that much (whether for the first chunk or a later one)
    for early in (1 / 1024, 0.5, 3.0):
        assert stall_from(playable - early, times, seconds) == early
    # A player that starts on the first chunk waits exactly the buffering it would have needed
    play = simulate_playback(times, seconds)
    assert play.stall_time == playable - times[0]
    assert (len(play.stalls) > 0) == (playable > times[0])
    if playable > times[0]:  # and starting on the first chunk, or any time before playable_start, stalls
        assert stall_from(times[0], times, seconds) == playable - times[0]
        assert stall_from((times[0] + playable) / 2, times, seconds) > 0
    assert play.audio[-1] == sum(seconds) and play.wall[-1] == playable + sum(seconds)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0.0, 3.0, allow_nan=False), st.integers(1, 96_000)),  # (gap s, samples)
        min_size=1,
        max_size=25,
    ),
    st.floats(0.0, 100.0, allow_nan=False),
)
def test_playback_figures_agree_with_the_simulation(chunks, offset):
    times, now = [], offset
    for gap, _ in chunks:
        now += gap
        times.append(now)
    samples = [n for _, n in chunks]
    seconds = [n / SAMPLE_RATE for n in samples]
    figures = playback_figures(times, samples)
    play = simulate_playback(times, seconds)
    assert figures.stall_count == len(play.stalls) and figures.stall_time == play.stall_time
    assert figures.time_to_first_audio == times[0]
    assert figures.time_to_playable_audio == playable_start(times, seconds)
    assert figures.buffering == figures.time_to_playable_audio - figures.time_to_first_audio
    assert figures.buffering >= 0
    # the buffering a player needs is what one starting on the first chunk waits, by the independent count
    assert figures.buffering == pytest.approx(stall_from(times[0], times, seconds), abs=1e-9)
    assert stall_from(figures.time_to_playable_audio, times, seconds) <= 1e-9


# -- plays_through ---------------------------------------------------------------------------------


def test_plays_through():
    assert plays_through(0.0, [])
    assert plays_through(0.5, [(0.4, 1.0), (1.4, 0.2)])  # 0.4 <= 0.5, then 1.4 <= 0.5 + 1.0
    assert plays_through(0.5, [(0.5, 0.1)])  # arriving just as the buffer empties is in time
    assert not plays_through(0.5, [(0.6, 1.0)])  # runs dry at 0.5 s, the audio comes at 0.6 s
    assert not plays_through(0.5, [(0.4, 0.1), (0.7, 5.0)])  # the runway is 0.6 s by the second arrival
    # waits count from now, not from the previous arrival
    assert plays_through(1.0, [(0.9, 0.5), (1.4, 0.5)])
    assert not plays_through(1.0, [(0.9, 0.5), (1.6, 0.5)])


def test_plays_through_with_the_rest_of_the_utterance():
    # an arrival holding infinite audio (the end brings the rest): nothing after it matters
    assert plays_through(0.1, [(0.05, math.inf), (1e9, 1.0)])
    assert plays_through(0.1, [(0.05, 0.1), (0.2, math.inf)])
    assert not plays_through(0.1, [(0.2, math.inf)])
    assert not plays_through(0.1, [(0.05, 0.01), (0.2, math.inf)])


# -- check_min_first_chunk_ms ----------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, 0, 250, 250.5, MAX_FIRST_CHUNK_MS])
def test_min_first_chunk_ms_accepted(value):
    checked = check_min_first_chunk_ms(value)
    assert checked is None if value is None else (checked == float(value) and type(checked) is float)


@pytest.mark.parametrize("value", [-1, -0.5, True, False, "100", float("nan"), math.inf, -math.inf, 60_001, [100]])
def test_min_first_chunk_ms_rejected(value):
    with pytest.raises(GenerationInputError, match="min_first_chunk_ms"):
        check_min_first_chunk_ms(value)


# -- FirstChunkHold ------------------------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def settle(hold: FirstChunkHold, clock: FakeClock, tokens: int, frames_each: int, dt: float, frames: int = 22):
    """``tokens`` tokens settle ``dt`` seconds apart, ``frames_each`` frames each; returns frames in."""
    for k in range(tokens):
        if k:
            clock.now += dt
        hold.produced(frames + k * frames_each, k + 1)
    return frames + (tokens - 1) * frames_each


CRUMB = 273 / SAMPLE_RATE  # what the demo decoder's first audible call yields: 0.011375 s


def test_fixed_hold():
    clock = FakeClock()
    hold = FirstChunkHold(200, clock=clock)
    assert not hold.released
    assert not hold.should_release(0.1, [], 0, None)
    assert not hold.should_release(0.199, [(8, 3840)], 8, 0)  # neither the end nor the schedule counts
    assert hold.should_release(0.2, [], 0, None)
    assert hold.should_release(0.5, [(10_000, 1)], 0, None)


def test_zero_never_holds():
    hold = FirstChunkHold(0, clock=FakeClock())
    assert hold.released
    assert hold.should_release(0.0, [], 0, None) and hold.should_release(CRUMB, [(10_000, 1)], 0, 5)


def test_adaptive_decides_nothing_before_two_tokens():
    clock = FakeClock()
    hold = FirstChunkHold(None, clock=clock)
    calls = [(30, 3840)]
    assert hold.token_rate is None and hold.frame_rate is None and hold.realtime_factor is None
    assert not hold.should_release(10.0, calls, 22, 0)  # not even a lot of audio at the very end
    hold.produced(22, 1)
    assert not hold.should_release(10.0, calls, 22, 0)
    hold.produced(28, 2)  # a second token at the same instant: no elapsed time, no rate
    assert hold.token_rate is None and not hold.should_release(10.0, calls, 28, 0)
    clock.now = 0.01
    hold.produced(34, 3)
    assert hold.token_rate is not None and hold.should_release(10.0, calls, 34, 0)


@pytest.mark.parametrize(
    "tokens, dt, realtime, released",
    [
        # 5 tokens of 6 frames, 0.24 s apart: 24 frames in 0.96 s = 25 frames/s = 0.5 x real time. No
        # amount of holding keeps such a player fed, so even a crumb with the next call far off goes.
        (5, 0.24, 0.5, True),
        # 0.8 x real time over 4 token intervals is thin evidence: had the frames per token been on
        # the low side (0.8 * (1 + 0.5 / sqrt(4)) = 1.0), the stream could keep up, so the crumb waits...
        (5, 0.15, 0.8, False),
        # ...while over 100 intervals it is not (0.8 * 1.05 < 1): it goes
        (101, 0.15, 0.8, True),
        # 0.1 s apart (60 frames/s, 1.2 x real time): the crumb waits. The cautious frames per token
        # is 6 * (1 - 0.5 / sqrt(4)) = 4.5, so 45 frames/s, and the call 8 frames away is expected
        # after ((8 + 4.5 / 2) / 45) * 1.1 + 0.02 = 0.27 s, far beyond 0.011 s.
        (5, 0.1, 1.2, False),
    ],
)
def test_adaptive_releases_at_once_when_slower_than_real_time(tokens, dt, realtime, released):
    clock = FakeClock()
    hold = FirstChunkHold(None, clock=clock)
    frames_in = settle(hold, clock, tokens, 6, dt)
    assert hold.realtime_factor == pytest.approx(realtime)
    calls = [(frames_in + 8, 3840), (frames_in + 1000, 480_000)]
    assert hold.should_release(CRUMB, calls, frames_in, None) == released


def fast_hold(decode_seconds: float = 0.0) -> tuple[FirstChunkHold, int]:
    """A stream 15 x faster than real time: 5 tokens of 6 frames, 1/128 s apart.

    Raw: 24 frames in 4/128 s = 768 frames/s (realtime factor 15.36). The estimate is cautious
    about frames per token over 4 tokens: 6 * (1 - 0.5 / sqrt(4)) = 4.5, times 128 tokens/s =
    576 frames/s. (Dyadic numbers, so these are exact.)"""
    clock = FakeClock()
    hold = FirstChunkHold(None, clock=clock)
    frames_in = settle(hold, clock, 5, 6, 1 / 128)
    if decode_seconds:
        hold.decoded(decode_seconds)
    assert hold.token_rate == 128 and hold.frames_per_token == 4.5 and hold.frame_rate == 576
    assert hold.realtime_factor == pytest.approx(15.36)
    return hold, frames_in


def test_adaptive_holds_a_crumb_and_releases_once_the_held_audio_covers_the_calls_ahead():
    hold, f = fast_hold()  # f = 46 frames in
    # Right after the first audible call: the crumb (0.011 s) is held, the next call is 8 frames
    # away and adds 0.16 s, then calls double to the window (100). The next call is expected after
    # ((8 + 4.5 / 2) / 576) * 1.1 + 0.02 = 0.0396 s: the crumb would run dry before it.
    schedule = [(f + 8, 3840), (f + 24, 7680), (f + 56, 15360), (f + 120, 30720), (f + 220, 48000), (f + 320, 48000)]
    assert not hold.should_release(CRUMB, schedule, f, None)
    assert not hold.released
    # That call ran: 0.011 + 0.16 = 0.171 s held at f + 8 frames in. Expected waits for the calls
    # ahead: ((16 + 2.25) / 576) * 1.1 + 0.02 = 0.055 s (<= 0.171 s held), then 0.116 s (<= 0.171
    # + 0.32 s), 0.238 s, 0.429 s, 0.620 s, each within the audio that arrived before it.
    assert hold.should_release(CRUMB + 3840 / SAMPLE_RATE, schedule[1:], f + 8, None)
    hold.release()
    assert hold.released and hold.should_release(0.0, schedule, f, None)


def test_adaptive_threshold_is_the_expected_wait_with_its_margin():
    hold, f = fast_hold()
    # one call 8 frames ahead: expected after ((8 + per_token / 2) / frame_rate) * margin + slack
    wait = (8 + 4.5 / 2) / 576 * WAIT_MARGIN + WAIT_SLACK
    assert 0.03 < wait < 0.05  # 0.0396 s with the shipped margins
    assert not hold.should_release(wait * 0.99, [(f + 8, 3840)], f, None)
    assert hold.should_release(wait * 1.01, [(f + 8, 3840)], f, None)
    # every arrival counts, not just the next: 0.05 s covers the first call but the runway by the
    # second one (0.05 + 0.16 s) is short of its wait ((156 + 2.25) / 576) * 1.1 + 0.02 = 0.32 s
    calls = [(f + 8, 3840), (f + 156, 48000)]
    assert not hold.should_release(0.05, calls, f, None)
    assert hold.should_release(0.2, calls, f, None)  # 0.36 s of runway
    # the decoder call's own time lengthens each wait: 0.02 s more per call, times the margin
    slow_decoder, f = fast_hold(decode_seconds=0.02)
    assert not slow_decoder.should_release(wait * 1.01, [(f + 8, 3840)], f, None)
    assert slow_decoder.should_release(wait * 1.01 + 0.02 * WAIT_MARGIN, [(f + 8, 3840)], f, None)


def test_adaptive_wait_depends_on_the_measured_rate():
    # 0.171 s held with the schedule that released at 576 frames/s above, on a stream 1.5 x real time
    # instead: 6 frames every 0.08 s, cautious 4.5 / 0.08 = 56.25 frames/s. The next call, 16 frames
    # away, is expected after ((16 + 2.25) / 56.25) * 1.1 + 0.02 = 0.377 s > 0.171 s: hold.
    clock = FakeClock()
    hold = FirstChunkHold(None, clock=clock)
    f = settle(hold, clock, 5, 6, 0.08)
    assert hold.frame_rate == pytest.approx(56.25)
    schedule = [(f + 16, 7680), (f + 48, 15360), (f + 112, 30720), (f + 212, 48000), (f + 312, 48000)]
    assert not hold.should_release(CRUMB + 0.16, schedule, f, None)


def test_adaptive_the_end_of_the_utterance_brings_the_rest():
    hold, f = fast_hold()
    # 0.06 s held and the next call 40 frames away: expected after ((40 + 2.25) / 576) * 1.1 + 0.02
    # = 0.101 s, so while the text is open (tokens_left None), or 20 tokens remain (20 * 4.5 = 90
    # frames, past the call), the audio is held.
    calls = [(f + 40, 19200), (f + 80, 38400)]
    assert not hold.should_release(0.06, calls, f, None)
    assert not hold.should_release(0.06, calls, f, 20)
    # 2 tokens left (9 frames): the end comes before that call, after (2 / 128) * 1.1 + 0.02 =
    # 0.037 s, and brings everything else: 0.06 s is enough
    assert hold.should_release(0.06, calls, f, 2)
    assert hold.should_release(0.06, calls, f, 0)  # the utterance is about to end: just the flush
    # a crumb shorter than the flush's expected wait (the slack, 0.02 s) is still held; the flush
    # delivers it with the rest (stream.py sends everything at the last chunk)
    assert not hold.should_release(0.01, calls, f, 0)
    # a costly decoder call lengthens even the end's wait: 0.05 s -> (0 + 0.05) * 1.1 + 0.02 = 0.075 s
    hold.decoded(0.05)
    hold.decoded(0.01)  # the costliest call counts
    assert hold.decode_seconds == 0.05
    assert not hold.should_release(0.06, calls, f, 0)
    assert hold.should_release(0.08, calls, f, 0)


def test_frames_per_token_caution_shrinks_with_more_tokens():
    clock = FakeClock()
    hold = FirstChunkHold(None, clock=clock)
    settle(hold, clock, 2, 6, 0.01)  # one token interval: 6 * (1 - 0.5) = 3
    assert hold.frames_per_token == pytest.approx(6 * (1 - FRAMES_PER_TOKEN_SPREAD))
    clock = FakeClock()
    hold = FirstChunkHold(None, clock=clock)
    settle(hold, clock, 101, 6, 0.01)  # 100 intervals: 6 * (1 - 0.05) = 5.7
    assert hold.frames_per_token == pytest.approx(5.7)
    assert hold.frame_rate == pytest.approx(570) and hold.realtime_factor == pytest.approx(12)


# -- StreamingDecoder.upcoming_calls -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    """The demo model and voice, built once for this module, warmed up by one short stream."""
    model = demo.build_demo_model()
    voice = demo.demo_voice(model)
    for _ in model.generate(prompt=voice, text="Warm up, please.", stream=True, seed=0):
        pass  # first-use costs (allocations, lazy set-up) stay out of the timed streams
    return model, voice


def vector(g: torch.Generator, dim: int) -> torch.Tensor:
    return torch.randn(dim, generator=g) + 0.5  # never the all-zero (unmarked) frame


def expected_sizes(window: int) -> list[int]:
    """FIRST_FLOWING_CALL_FRAMES, doubling, capped at the window, until two calls of the window."""
    sizes = []
    for k in range(20):
        sizes.append(min(window, StreamingDecoder.FIRST_FLOWING_CALL_FRAMES * 2**k))
        if sizes.count(window) == 2:
            return sizes
    raise AssertionError("unreachable")


@pytest.mark.parametrize("window", [100, 20, 4])
def test_upcoming_calls_are_the_schedule_of_one_frame_blocks(tiny, window):
    """With one-frame blocks every call is exactly its size: the prediction is the schedule."""
    decoder = tiny[0].require_decoder()
    dim = decoder.config.embed_dim
    assert StreamingDecoder.FIRST_FLOWING_CALL_FRAMES == 8
    sd = StreamingDecoder(decoder, window_size=window, skip_leading_frames=5)
    g = torch.Generator().manual_seed(window)
    while sd.samples_out == 0:
        assert sd.upcoming_calls() == []  # no audio yet: nothing to predict from
        sd.decode_block(vector(g, dim), 1)
    assert sd.calls == 1
    start = sd.frames_in
    predicted = sd.upcoming_calls()
    ats = [at for at, _ in predicted]
    sizes = [b - a for a, b in zip([start] + ats[:-1], ats)]
    assert sizes == expected_sizes(window)
    assert sd.upcoming_calls(limit=2) == predicted[:2]
    assert all(added == size * SPF for (_, added), size in zip(predicted[1:], sizes[1:]))
    actual = []  # (frames in when a call ran, samples it added)
    while len(actual) < len(predicted):
        calls = sd.calls
        out = sd.decode_block(vector(g, dim), 1)
        if sd.calls != calls:
            actual.append((sd.frames_in, out.numel()))
    assert [at for at, _ in actual] == ats
    assert [n for _, n in actual[1:]] == [n for _, n in predicted[1:]]
    # the first call's samples: the CNN output so far is short of whole frames by less than one
    assert 0 <= actual[0][1] - predicted[0][1] <= SPF
    assert sd.upcoming_calls() != []
    sd.flush(3)
    assert sd.upcoming_calls() == []  # finished: no calls ahead
    sd.reset()
    assert sd.upcoming_calls() == []


@pytest.mark.parametrize("window", [100, 16])
@pytest.mark.parametrize("seed", [1, 2])
def test_the_next_call_runs_within_a_block_of_its_prediction(tiny, window, seed):
    decoder = tiny[0].require_decoder()
    dim = decoder.config.embed_dim
    sd = StreamingDecoder(decoder, window_size=window, skip_leading_frames=5)
    g = torch.Generator().manual_seed(seed)
    checked = 0
    for _ in range(150):
        frames = int(torch.randint(1, 13, (1,), generator=g))
        ahead, calls, samples = sd.upcoming_calls(), sd.calls, sd.samples_out
        out = sd.decode_block(vector(g, dim), frames)
        if not ahead:
            continue
        at, added = ahead[0]
        if sd.calls == calls:
            assert sd.frames_in < at  # not yet due: no call
        else:
            # the call runs on the block that takes the frames in to `at` or past it
            assert at <= sd.frames_in < at + frames, (at, sd.frames_in, frames)
            # and brings the predicted samples plus the frames it overshot by (within one frame)
            late = (sd.frames_in - at) * SPF
            assert added + late <= out.numel() <= added + late + SPF
            assert sd.samples_out - samples == out.numel()
            checked += 1
    assert checked >= 3


# -- the adaptive hold on a producer of known rate (no wall clock) -----------------------------------


def drive(
    decoder, hold: FirstChunkHold, clock: FakeClock, durations, token_seconds, decode_seconds=0.0, old_schedule=False
):
    """Tokens of ``durations`` frames settle one every ``token_seconds`` (and a decoder call takes
    ``decode_seconds``), going through a StreamingDecoder and ``hold`` as in ``stream._Delivery``.
    ``old_schedule``: the call after the first audible one takes twice that call's frames, as before
    the first chunk was held. Returns (chunk times, chunk seconds)."""
    sd = StreamingDecoder(decoder, window_size=100, skip_leading_frames=5)
    g = torch.Generator().manual_seed(0)
    tokens = len(durations) - 1  # the last duration: the trailing frames at the flush
    held: list[int] = []
    times: list[float] = []
    seconds: list[float] = []

    def deliver(samples: torch.Tensor, done: int, last: bool = False) -> None:
        if samples.numel():
            held.append(samples.numel())
        if not held:
            return
        if not (last or hold.released):
            if not hold.should_release(sum(held) / SAMPLE_RATE, sd.upcoming_calls(), sd.frames_in, tokens - done):
                return
            hold.release()
        times.append(clock.now)
        seconds.append(sum(held) / SAMPLE_RATE)
        held.clear()

    for k in range(tokens):
        clock.now += token_seconds
        calls = sd.calls
        samples = sd.decode_block(vector(g, decoder.config.embed_dim), durations[k])
        if sd.calls != calls:
            clock.now += decode_seconds
            hold.decoded(decode_seconds)
            if old_schedule and sd.calls == 1:
                sd._next_call_frames = min(sd.window_size, 2 * sd._decoded_frames)
        hold.produced(sd.frames_in, k + 1)
        deliver(samples, k + 1)
    clock.now += token_seconds
    deliver(sd.flush(durations[-1]), tokens, last=True)
    return times, seconds


@pytest.mark.parametrize("frames_each", [1, 3, 6, 12])
@pytest.mark.parametrize("realtime", [1.1, 1.5, 2.0, 5.0, 20.0])
@pytest.mark.parametrize("decode_seconds", [0.0, 0.02])
def test_adaptive_hold_keeps_a_steady_producer_fed(tiny, frames_each, realtime, decode_seconds):
    """A producer faster than real time at a steady rate (every token the same frames): a player
    starting on the first chunk the hold lets go never waits, whatever the rate."""
    decoder = tiny[0].require_decoder()
    clock = FakeClock()
    durations = [frames_each] * 80 + [3]
    token_seconds = frames_each / (50 * realtime)
    times, seconds = drive(decoder, FirstChunkHold(None, clock=clock), clock, durations, token_seconds, decode_seconds)
    assert sum(seconds) * SAMPLE_RATE == pytest.approx((sum(durations) - 5) * SPF - 6)  # all the audio, once
    assert stall_from(times[0], times, seconds) == pytest.approx(0.0, abs=1e-12)
    assert seconds[0] > 0.1  # more than the crumb of the first audible call
    if realtime >= 2:  # fast enough not to need much: the hold lets go within a second of audio
        assert seconds[0] < 1.0


def test_without_the_hold_the_same_producer_stalls(tiny):
    """The contrast: min_first_chunk_ms=0 sends the crumb (0.011 s) and the next call needs 8 more
    frames, two tokens of 6 frames at 5 x real time (0.048 s): the player waits."""
    decoder = tiny[0].require_decoder()
    clock = FakeClock()
    times, seconds = drive(decoder, FirstChunkHold(0, clock=clock), clock, [6] * 80 + [3], 6 / 250)
    assert seconds[0] < 1 / 50
    assert stall_from(times[0], times, seconds) > 0.02


@pytest.mark.parametrize("realtime", [3.0, 5.0, 12.0, 30.0])
@pytest.mark.parametrize("seed", [1, 2])
def test_playable_audio_comes_no_later_than_before_the_hold(tiny, realtime, seed):
    """Before the hold (the first samples at once, then a call of twice the first call's frames), a
    player could start only after the first chunk and the wait that followed it. The held first
    chunk is playable within 10 % of that, and starts a player that never waits."""
    import random

    decoder = tiny[0].require_decoder()
    rng = random.Random(seed)
    durations = [max(1, round(rng.gauss(6, 3))) for _ in range(60)] + [3]  # a token brings 1 to ~15 frames
    token_seconds = 6 / (50 * realtime)
    clock = FakeClock()
    before = drive(decoder, FirstChunkHold(0, clock=clock), clock, durations, token_seconds, 0.01, old_schedule=True)
    play = simulate_playback(*before)
    assert play.stalls, "before the hold, a player starting on the first chunk waited"
    before_playable = before[0][0] + (play.stalls[0][1] - play.stalls[0][0])
    clock = FakeClock()
    times, seconds = drive(decoder, FirstChunkHold(None, clock=clock), clock, durations, token_seconds, 0.01)
    assert stall_from(times[0], times, seconds) == 0.0
    assert playable_start(times, seconds) == times[0] <= 1.1 * before_playable, (times[0], before_playable)


# -- end to end on the demo model ------------------------------------------------------------------

TEXTS = [
    ("Please call Stella. Ask her to bring these things with her from the store.", 11),
    ("Five shots may have been fired, the experts said.", 12),
    ("Hello there! How are you today? I hope the weather is nice.", 13),
]


def play(stream) -> tuple[list[float], list[torch.Tensor]]:
    """An instrumented player: it notes on its own clock when each chunk reaches it."""
    arrivals, chunks = [], []
    for chunk, rate in stream:
        arrivals.append(time.perf_counter())
        assert rate == SAMPLE_RATE
        chunks.append(chunk)
    return arrivals, chunks


def test_the_instrumented_player_sees_a_late_chunk():
    def late_stream():
        yield torch.zeros(240), SAMPLE_RATE  # 10 ms of audio
        time.sleep(0.06)  # the next chunk 60 ms later: about 50 ms of silence
        yield torch.zeros(24000), SAMPLE_RATE

    arrivals, chunks = play(late_stream())
    stalled = stall_from(arrivals[0], arrivals, [c.numel() / SAMPLE_RATE for c in chunks])
    assert 0.045 <= stalled < 0.5


def words(text: str) -> list[str]:
    parts = text.split(" ")
    return [p + " " for p in parts[:-1]] + [parts[-1]]


@pytest.fixture(scope="module")
def references(tiny):
    model, voice = tiny
    return {text: model.generate(prompt=voice, text=text, seed=seed).audio[0] for text, seed in TEXTS}


@pytest.mark.parametrize("text, seed", TEXTS)
def test_a_player_starting_on_the_first_chunk_never_waits(tiny, references, text, seed):
    model, voice = tiny
    tries = []
    for _ in range(3):  # a wall-clock check: a hiccup of a busy machine gets another try
        stream = model.generate(prompt=voice, text=text, stream=True, seed=seed)
        arrivals, chunks = play(stream)
        seconds = [c.numel() / SAMPLE_RATE for c in chunks]
        assert stream.result.chunk_samples == [c.numel() for c in chunks]
        audio = torch.cat(chunks)
        assert audio.shape == references[text].shape and (audio - references[text]).abs().max() <= 1e-4
        stalled = stall_from(arrivals[0], arrivals, seconds)
        rate = stream.realtime_factor  # below 1 the hold sends the crumb at once, by design: a busy machine
        tries.append({"first_chunk_s": seconds[0], "stalled_s": stalled, "chunks": len(chunks), "realtime": rate})
        if seconds[0] > 0.05 and stalled <= 0.005:
            break
    else:
        pytest.fail(f"a player starting on the first chunk waited, or the first chunk was a crumb: {tries}")


@pytest.mark.parametrize("text, seed", TEXTS)
def test_chunking_never_changes_the_audio(tiny, references, text, seed):
    model, voice = tiny
    reference = references[text]
    duration = reference.numel() / SAMPLE_RATE
    for source in (text, words(text)):
        for first_ms in (None, 0, 300):
            given_text = iter(source) if isinstance(source, list) else source
            stream = model.generate(prompt=voice, text=given_text, stream=True, seed=seed, min_first_chunk_ms=first_ms)
            chunks = [chunk for chunk, _ in stream]
            audio = torch.cat(chunks)
            where = (first_ms, "pieces" if isinstance(source, list) else "text")
            assert audio.shape == reference.shape, where
            assert (audio - reference).abs().max() <= 1e-4, where
            first = chunks[0].numel() / SAMPLE_RATE
            if first_ms == 0:  # the first audible call's samples at once: less than a frame
                assert 0 < first <= 1 / 50, where
            if first_ms == 300 and isinstance(source, str):
                assert first >= 0.3 or (len(chunks) == 1 and first == duration), where
