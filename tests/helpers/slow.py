"""An engine made slower by a known cost, so a fast test model meets real-time limits the way a big one would."""

from __future__ import annotations

import time


def slow_llm(engine, per_row: float) -> None:
    """Make each batched LLM call of ``engine`` cost ``per_row`` seconds more per stream row (whatever
    the positions, so a prefill costs what a step does): a cost the engine really pays, so its tick
    log, and a capacity model fitted to it, see it."""
    runner = engine.runner
    llm = runner.llm

    def slowed(batch):
        time.sleep(per_row * sum(step.rows for _, step in batch))
        return llm(batch)

    runner.llm = slowed
