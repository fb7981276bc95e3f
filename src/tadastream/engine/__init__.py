"""Batched generation: many streams over one loaded model, one tick at a time (see :mod:`.core`)."""

from .core import Engine, EngineStream, Sink
from .offline import generate_steps, generate_utterances
from .runner import Runner

__all__ = ["Engine", "EngineStream", "Runner", "Sink", "generate_steps", "generate_utterances"]
