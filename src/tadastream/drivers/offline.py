"""Whole utterances on the engine: ``generate()``'s batch of texts, and a step-by-step iterator."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from ..engine.core import Engine, engine_for
from ..generation.outputs import (
    GenerationOutput,
    StepOutput,
    SyncTokGenerationOutput,
    decode_audio,
    decode_frames,
    finish_output,
)
from ..generation.plan import GenerationPlan
from ..generation.program import SpeechProgram
from ..generation.rng import StreamRng
from ..timestamps import WordClock

#: Texts of one generate() call that run side by side when no engine is given.
MAX_BATCH = 16


class _Collect:
    """A sink that keeps what a stream ends with."""

    def __init__(self):
        self.steps: list[StepOutput] = []
        self.result: SyncTokGenerationOutput | None = None
        self.error: BaseException | None = None
        self.stopped = False

    def finish(self, result: SyncTokGenerationOutput) -> None:
        self.result, self.stopped = result, True

    def fail(self, error: BaseException) -> None:
        self.error, self.stopped = error, True

    def parked(self) -> None:
        """Never called: a whole text never waits for more."""

    def cancelled(self) -> None:
        self.stopped = True


def _wait(engine: Engine, done) -> None:
    if engine.has_worker:
        engine.wait(done)
    elif not engine.run_until(done):
        raise RuntimeError("generation stalled: a stream waits for text that never comes")


def generate_utterances(
    model,
    plans: Sequence[GenerationPlan],
    rngs: Sequence[StreamRng],
    window_size: int = 100,
    engine: Engine | None = None,
) -> list[GenerationOutput]:
    """Generate every plan (side by side, up to the engine's slots), then decode each utterance."""
    engine = engine_for(model, engine, min(len(plans), MAX_BATCH))
    sinks = [_Collect() for _ in plans]
    handles = [
        engine.submit(SpeechProgram(engine.shape, plan, rng, sink.steps.append, None, engine.prefill_chunk), sink)
        for plan, rng, sink in zip(plans, rngs, sinks)
    ]
    try:
        _wait(engine, lambda: all(s.stopped for s in sinks))
    finally:
        for handle in handles:
            handle.cancel()
    outputs = []
    for plan, sink in zip(plans, sinks):
        if sink.error is not None:
            raise sink.error
        sink.steps.clear()
        vectors, time_before = decode_frames(model, plan, sink.result)
        audio = decode_audio(model, vectors[0], time_before[0], window_size)
        clock = WordClock.of(plan, model.tokenizer)
        if clock is not None:
            clock.replay(time_before[0, : vectors.shape[1]].tolist(), audio.numel())
        outputs.append(finish_output(model, plan, sink.result, [audio], clock))
    return outputs


def generate_steps(
    model, plan: GenerationPlan, rng: StreamRng | None = None, engine: Engine | None = None
) -> Iterator[StepOutput | SyncTokGenerationOutput]:
    """Yield a StepOutput per settled frame as it settles, then the final SyncTokGenerationOutput."""
    engine = engine_for(model, engine)
    sink = _Collect()
    rng = rng or StreamRng.fork_global(model.device)
    handle = engine.submit(SpeechProgram(engine.shape, plan, rng, sink.steps.append, None, engine.prefill_chunk), sink)
    try:
        while True:
            _wait(engine, lambda: sink.steps or sink.stopped)
            while sink.steps:
                yield sink.steps.pop(0)
            if sink.stopped:
                break
    finally:
        handle.cancel()
    if sink.error is not None:
        raise sink.error
    if sink.result is not None:
        yield sink.result
