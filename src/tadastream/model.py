"""``TadaForCausalLM``, hume-tada's class and names: the weights (:class:`~tadastream.weights.TadaWeights`)
plus ``generate`` and ``compile``, which hand the work to the drivers and the engine.

This facade is the only place where the weights meet the drivers: the weights module imports
neither the engine nor a driver, and the drivers take the weights as a typed argument.
"""

from __future__ import annotations

import functools
from typing import Any, Self

import torch

from .drivers import generate_utterances
from .drivers.longform import LongFormStream, one_generation, open_stream, plan_long_form, warn_about_scripts
from .engine import CompileOptions, Engine
from .engine.graphs import DEFAULT_MAX_POSITIONS
from .generation import (
    GenerationInputError,
    GenerationOutput,
    InferenceOptions,
    StreamRng,
    TextInput,
    merge_outputs,
    plan_generation,
)
from .weights import TadaWeights

__all__ = ["TadaForCausalLM", "generate"]


class TadaForCausalLM(TadaWeights):
    """The TADA language model with generation: ``generate`` speaks text (streamed or whole),
    ``compile`` runs it on compiled steps; loading and the modules are :class:`TadaWeights`'."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        #: The engine calls run on when they are given none (set by :meth:`compile` and by
        #: ``load_model(..., warmup=True)``); None: each call runs on an engine of its own.
        self.engine: Engine | None = None

    def compile(
        self,
        *,
        max_streams: int = 8,
        max_positions: int | None = None,
        warmup: bool = True,
        backend: str = "inductor",
        cuda_graphs: bool | None = None,
    ) -> Self:
        """Run generation on compiled fixed-shape steps: the LLM step and the whole flow solve go
        through ``torch.compile(fullgraph=True)`` and, on CUDA, are captured as CUDA graphs, over a
        slot arena preallocated for ``max_streams`` streams of ``max_positions`` positions.

        The compiled engine becomes :attr:`engine`, which ``generate``/streams use when they are
        given none (concurrent calls are batched on it). ``warmup`` builds every batch size's graphs
        now (minutes on a small CPU, seconds on a GPU) instead of at the first calls. On CPU the
        model must not hold oneDNN-prepacked weights: load it with ``load_model(..., compile=True)``
        or ``optimize_for_inference(prepack=False)``. Returns the model.
        """
        if self.inference_layout == "PackedLinear" and backend not in ("eager", "aot_eager"):
            raise RuntimeError(
                "torch.compile cannot trace oneDNN-prepacked weights: load the model with "
                "load_model(..., compile=True) or call optimize_for_inference(prepack=False) before compile()"
            )
        options = CompileOptions(max_positions or DEFAULT_MAX_POSITIONS, backend, cuda_graphs)
        engine = Engine(self, max_streams=max_streams, compile=options)
        if warmup:
            engine.warmup()
        return self.hold_engine(engine)

    def hold_engine(self, engine: Engine) -> Self:
        """Make ``engine`` the one calls run on when given none, closing the one held before: the
        one place the model's shared engine is set (:meth:`compile`, ``load_model(warmup=True)``)."""
        if self.engine is not None and self.engine is not engine:
            self.engine.close()
        self.engine = engine
        return self

    # -- generation ----------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        prompt=None,
        text: str | list[str] = "",
        num_transition_steps: int = 5,
        num_extra_steps: int = 0,
        system_prompt: str | None = None,
        user_turn_prompt: str | None = None,
        inference_options: InferenceOptions | None = None,
        use_text_in_prompt: bool = False,
        normalize_text: bool = True,
        verbose: bool = False,
        stream: bool = False,
        streaming_cnn_window_size: int = 100,
        seed: int | None = None,
        engine: Any = None,
        long_form: bool | None = None,
        segment_chars: int = 400,
        min_first_chunk_ms: float | None = None,
    ) -> Any:
        """Speak ``text`` in the voice of ``prompt``.

        Returns a :class:`GenerationOutput` (``audio[i]``: 1-D float tensor at 24 kHz), or with
        ``stream=True`` an :class:`~tadastream.drivers.stream.AudioStream` yielding ``(chunk, sample_rate)``.
        With ``stream=True``, ``text`` may also be an iterable or async iterable of string pieces
        (characters, words, LLM tokens) or a :class:`~tadastream.generation.TextInput`: speech
        starts before the text is complete, and the audio equals that of the whole text at once.

        A list of texts is generated side by side (batched) and gives one audio each. ``seed``
        draws from generators seeded with it (torch's global state is not read or changed);
        without it a call forks torch's global state, so ``torch.manual_seed(s)`` before the call
        reproduces the reference; in a list, text i > 0 gets a seed derived from that state.
        ``engine``: an :class:`~tadastream.engine.Engine` shared with other calls (their streams
        are batched together); by default each call runs on its own.

        ``long_form``: a text of any length is spoken in segments of at most ``segment_chars``
        characters (sentences, then clauses), one after another with seamless joins, in bounded
        memory (:mod:`tadastream.drivers.longform`). ``None`` (default) does so only for a text too long
        for one generation, ``True`` always, ``False`` never (such a text is then an error).
        Streaming and not give the same audio either way.

        ``min_first_chunk_ms`` (``stream=True``): ``None`` (default) holds the first chunk until
        playback that starts on it will not pause at the rate the stream is being made; ``0``
        sends the first final samples at once (a few ms, then a wait: for clients that buffer);
        a number holds that many milliseconds. The audio is the same either way.
        """
        kwargs = dict(
            num_transition_steps=num_transition_steps,
            num_extra_steps=num_extra_steps,
            system_prompt=system_prompt,
            user_turn_prompt=user_turn_prompt,
            inference_options=inference_options,
            use_text_in_prompt=use_text_in_prompt,
            normalize_text=normalize_text,
        )
        engine = engine if engine is not None else self.engine
        if long_form is not None and not isinstance(long_form, bool):
            raise GenerationInputError(f"long_form must be True, False or None, got {long_form!r}")
        if min_first_chunk_ms is not None and not stream:
            raise GenerationInputError("min_first_chunk_ms shapes a stream's first chunk: pass stream=True or drop it")
        if stream:
            if (
                not isinstance(text, str | TextInput)
                and not hasattr(text, "__iter__")
                and not hasattr(text, "__aiter__")
            ):
                raise GenerationInputError("text must be a string, or an iterable / async iterable of string pieces")
            self.require_decoder()
            return open_stream(
                self,
                prompt,
                text,
                long_form=long_form,
                segment_chars=segment_chars,
                window_size=streaming_cnn_window_size,
                engine=engine,
                seed=seed,
                min_first_chunk_ms=min_first_chunk_ms,
                **kwargs,
            )
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise GenerationInputError(
                "text must be a string or a non-empty list of strings (stream=True takes pieces)"
            )
        for t in texts:
            warn_about_scripts(self, t)
        rng = StreamRng.from_seed(seed, self.device) if seed is not None else StreamRng.fork_global(self.device)
        rngs = [rng.derive(i) for i in range(len(texts))]
        plans = [  # each text's plan, every one checked before any work; None: it goes in segments
            one_generation(long_form, t, functools.partial(plan_generation, self, prompt, t, **kwargs)) for t in texts
        ]
        if any(plan is None for plan in plans):
            return self._generate_long(prompt, texts, rngs, segment_chars, streaming_cnn_window_size, engine, kwargs)
        self.require_decoder()
        return merge_outputs(generate_utterances(self, plans, rngs, streaming_cnn_window_size, engine))

    def _generate_long(self, prompt, texts, rngs, segment_chars, window_size, engine, plan_kwargs) -> GenerationOutput:
        """Each text through the long-form path (the streaming one, so the audio is the same), in turn."""
        for text in texts:  # every text and segment checked before any work
            plan_long_form(self, prompt, text, segment_chars, **plan_kwargs)
        outputs = []
        for text, rng in zip(texts, rngs):
            with LongFormStream(
                self,
                prompt,
                text,
                rng=rng,
                segment_chars=segment_chars,
                window_size=window_size,
                engine=engine,
                min_first_chunk_ms=0,  # nobody listens to the chunks: never hold them
                **plan_kwargs,
            ) as stream:
                chunks = [chunk for chunk, _ in stream]
            result = stream.result
            result.audio = [torch.cat(chunks) if chunks else torch.zeros(0)]
            outputs.append(result)
        return merge_outputs(outputs)


# ``generate(model, prompt, text, ...)`` as a plain function, for callers that prefer one.
generate = TadaForCausalLM.generate
