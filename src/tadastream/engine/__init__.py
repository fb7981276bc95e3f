"""Batched generation: many streams over one loaded model, one tick at a time (see :mod:`.core`)."""

from .core import Engine, EngineStream, Sink, engine_for
from .graphs import CompileOptions
from .runner import Runner

__all__ = [
    "CompileOptions",
    "Engine",
    "EngineStream",
    "Runner",
    "Sink",
    "engine_for",
]
