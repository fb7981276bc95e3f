"""What turns a request into audio on the engine: a stream (:mod:`.stream`), long form in segments
(:mod:`.longform`, split by :mod:`.segments`), and whole utterances side by side (:mod:`.offline`).

The drivers sit above the engine and the weights: they submit programs to an
:class:`~tadastream.engine.Engine` and decode what it settles; nothing below imports them.
"""

from .offline import generate_steps, generate_utterances

__all__ = ["generate_steps", "generate_utterances"]
