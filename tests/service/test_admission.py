"""Admission by real-time capacity: the tick-time fit, the decision, and the queue that follows it."""

from __future__ import annotations

import asyncio
import collections
import math
import time
from types import SimpleNamespace

import pytest

from tadastream.engine.capacity import CapacityModel, fit_ticks
from tadastream.engine.core import TickRecord
from tadastream.service import Admission, RequestRefused

#: ticks whose time is exactly 0.015 s + 0.01 s per LLM row
LINEAR = [TickRecord(2, 1, 0.035), TickRecord(4, 2, 0.055), TickRecord(6, 3, 0.075)]


class FakeEngine:
    """What a capacity model reads of an engine."""

    def __init__(self, records=(), streams=(), max_streams: int = 8):
        self.tick_log = collections.deque(records, maxlen=256)
        self._running = list(streams)
        self.max_streams = max_streams


class FakeStream:
    """What a capacity model reads of a running stream: LLM rows, steps answered, frames settled."""

    def __init__(self, rows: int, steps: int = 0, frames: int = 0):
        self.program = SimpleNamespace(rows=rows)
        self.steps, self.frames_settled = steps, frames


def test_the_fit_is_least_squares_over_steady_ticks():
    assert fit_ticks([]) is None
    fit = fit_ticks(LINEAR + [TickRecord(98, 2, 1.0)])  # a prefill tick (49 positions a row) is left out
    assert (fit.intercept, fit.per_row, fit.ticks) == (pytest.approx(0.015), pytest.approx(0.01), 3)
    assert fit.seconds(10) == pytest.approx(0.115)
    only_prefill = fit_ticks([TickRecord(98, 2, 1.0)])  # nothing else yet: used, proportionally
    assert (only_prefill.intercept, only_prefill.per_row) == (0.0, pytest.approx(1 / 98))


def test_the_fit_falls_back_to_proportional_and_is_never_negative():
    one_size = fit_ticks([TickRecord(4, 2, 0.08)] * 5)  # rows never varied: no slope to learn
    assert (one_size.intercept, one_size.per_row) == (0.0, pytest.approx(0.02))
    falling = fit_ticks([TickRecord(2, 1, 0.05), TickRecord(4, 2, 0.03)], half_life=math.inf)  # noise
    assert (falling.intercept, falling.per_row) == (0.0, pytest.approx(0.04 / 3))
    steep = fit_ticks([TickRecord(2, 1, 0.01), TickRecord(4, 2, 0.05)], half_life=math.inf)  # intercept < 0
    assert (steep.intercept, steep.per_row) == (0.0, pytest.approx(0.03 / 3))


def test_the_newest_ticks_weigh_most():
    # weights 0.5 and 1 with a half-life of one tick: (0.5 * 0.1 + 0.02) / 1.5 s for 2 rows
    fit = fit_ticks([TickRecord(2, 1, 0.1), TickRecord(2, 1, 0.02)], half_life=1)
    assert fit.per_row == pytest.approx(0.07 / 1.5 / 2)


def test_admits_while_every_stream_stays_ahead_of_playback():
    a = FakeStream(rows=2, steps=100, frames=1000)  # 1000 frames = 20 s in 100 steps: 0.2 s a tick
    b = FakeStream(rows=2, steps=10, frames=20)  # under a second of audio: not trusted yet
    model = CapacityModel(FakeEngine(LINEAR, [a, b]))
    # every stream (b and newcomers as a's 0.2 s) must get its 0.2 s of audio within 0.2 / 1.25 = 0.16 s
    assert model.admits(5)  # 0.015 + 0.01 * (4 + 5 * 2) = 0.155 s
    assert not model.admits(6)  # 0.175 s
    assert model.capacity() == 7  # 14.5 rows fit: the 2 running plus 5 newcomers of 2 rows

    a.steps, a.frames_settled = 110, 1075  # since first seen: 75 frames in 10 steps, 0.15 s a tick
    assert model.rate(a) == (pytest.approx(0.15), True)
    assert model.admits(3) and not model.admits(4)  # within 0.12 s: 0.115 s, 0.135 s
    assert model.capacity() == 5

    slow = FakeStream(rows=3, steps=100, frames=500)  # 0.1 s a tick: 0.08 s at most
    model.engine._running.append(slow)
    assert not model.admits(1)  # 0.015 + 0.01 * (7 + 2) = 0.105 s
    assert model.capacity() == 2, "already past capacity: one stream too many"

    model.engine._running.clear()  # a newcomer is expected to settle what the streams last did
    assert model.capacity() == 5
    assert model.snapshot() == {
        "policy": "realtime",
        "margin": 1.25,
        "capacity": 5,
        "streams": 0,
        "tick_seconds": {"intercept": 0.015, "per_row": 0.01, "ticks": 3},
        "predicted_tick_seconds": 0.015,
        "audio_seconds_per_tick": 0.15,
    }


def test_before_any_tick_it_admits_and_knows_no_capacity():
    model = CapacityModel(FakeEngine(), margin=2.0)
    assert model.admits(100) and model.capacity() is None
    assert model.snapshot()["tick_seconds"] is None and model.snapshot()["audio_seconds_per_tick"] == 0.2
    with pytest.raises(ValueError, match="margin must be >= 1"):
        CapacityModel(FakeEngine(), margin=0.9)


class Verdict:
    """A capacity model whose answer the test sets."""

    def __init__(self, running: int = 0):
        self.room, self.running_now, self.asked = False, running, []

    def admits(self, extra: int = 1) -> bool:
        self.asked.append(extra)
        return self.room

    def running(self) -> int:
        return self.running_now

    def capacity(self) -> int | None:
        return 1


def test_realtime_admission_queues_refuses_past_the_queue_and_rechecks():
    async def scenario():
        verdict = Verdict()
        adm = Admission(4, 1, timeout=10, capacity=verdict, recheck=0.01)
        await adm.acquire()  # alone: admitted whatever the prediction (no stream is helped by waiting)
        assert adm.active == 1 and verdict.asked == []
        queued = asyncio.create_task(adm.acquire())
        await asyncio.sleep(0.05)
        assert adm.waiting == 1 and adm.active == 1, "three slots free, but it would break real time"
        assert verdict.asked[0] == 2, "the holder whose stream is not running yet is a newcomer too"
        with pytest.raises(RequestRefused) as refused:
            await adm.acquire()
        error = refused.value
        assert (error.status, error.code) == (429, "queue_full")
        # 5 s a stream before any finished, one waiting ahead, served 1 at a time (the capacity)
        assert error.retry_after == 10
        assert error.message == (
            "the server is at its real-time capacity (1 running) and the queue is full; retry in 10 s"
        )
        verdict.room = True  # the streams progressed: the periodic re-check admits, no release needed
        await asyncio.wait_for(queued, 1)
        assert adm.active == 2 and adm.waiting == 0

    asyncio.run(scenario())


def test_realtime_admission_times_out_with_a_503():
    async def scenario():
        adm = Admission(4, 2, timeout=0.05, capacity=Verdict(running=1), recheck=0.01)
        await adm.acquire()
        started = time.perf_counter()
        with pytest.raises(RequestRefused) as refused:
            await adm.acquire()
        assert refused.value.code == "queue_timeout" and time.perf_counter() - started < 1
        # slots were free all along: the model said no; nobody else waits, one stream at a time, 5 s each
        assert refused.value.retry_after == 5
        assert refused.value.message == (
            "the server stayed at its real-time capacity (1 running) for 0.05 s; retry in 5 s"
        )
        assert adm.active == 1 and adm.waiting == 0
        adm.release(held=3.0)
        assert adm.active == 0

    asyncio.run(scenario())


def test_a_released_slot_goes_to_a_waiter_only_with_the_models_word():
    async def scenario():
        verdict = Verdict(running=2)
        adm = Admission(4, 4, timeout=10, capacity=verdict, recheck=60)  # no periodic re-check here
        adm.active = 3
        queued = asyncio.create_task(adm.acquire())
        await asyncio.sleep(0.01)
        adm.release()
        assert adm.active == 2 and not queued.done(), "a slot came free, but the model still says no"
        verdict.room = True
        adm.release()
        await asyncio.wait_for(queued, 1)
        assert adm.active == 2

    asyncio.run(scenario())
