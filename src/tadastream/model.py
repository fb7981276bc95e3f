"""``TadaForCausalLM``, hume-tada's class and names: the weights (:class:`~tadastream.weights.TadaWeights`)
plus ``generate`` and ``compile``, which hand the work to the drivers and the engine.

This facade is the only place where the weights meet the drivers: the weights module imports
neither the engine nor a driver, and the drivers take the weights as a typed argument.
"""

from __future__ import annotations

from typing import Any, Self

import torch

from .drivers import generate_utterances
from .drivers.longform import LongFormPlan, LongFormStream, open_stream, plan_request, speak_whole, warn_about_scripts
from .drivers.stream import AudioStream
from .engine import CompileOptions, Engine
from .engine.graphs import DEFAULT_MAX_POSITIONS
from .generation import (
    GenerationInputError,
    GenerationOutput,
    GenerationPlan,
    InferenceOptions,
    SpeechRequest,
    TextLayout,
    merge_outputs,
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
        if min_first_chunk_ms is not None and not stream:
            raise GenerationInputError("min_first_chunk_ms shapes a stream's first chunk: pass stream=True or drop it")
        texts = [text] if stream or isinstance(text, str) else list(text) if isinstance(text, list | tuple) else []
        if not texts or not (stream or all(isinstance(t, str) for t in texts)):
            raise GenerationInputError(
                "text must be a string or a non-empty list of strings (stream=True takes pieces)"
            )
        layout = TextLayout(
            num_transition_steps=num_transition_steps,
            num_extra_steps=num_extra_steps,
            system_prompt=system_prompt,
            user_turn_prompt=user_turn_prompt,
            use_text_in_prompt=use_text_in_prompt,
            normalize_text=normalize_text,
        )
        requests = [
            SpeechRequest(
                t,
                voice=prompt,
                options=inference_options if inference_options is not None else InferenceOptions(),
                layout=layout,
                seed=seed,
                long_form=long_form,
                segment_chars=segment_chars,
                min_first_chunk_ms=min_first_chunk_ms,
                window_size=streaming_cnn_window_size,
            )
            for t in texts
        ]
        if stream:
            return self.stream(requests[0], engine)
        return self.speak(requests, engine)

    def stream(self, request: SpeechRequest, engine: Engine | None = None) -> AudioStream | LongFormStream:
        """Speak ``request`` as it is made: an :class:`~tadastream.drivers.stream.AudioStream`, or a
        :class:`~tadastream.drivers.longform.LongFormStream` for a text that goes in segments.
        ``engine``: one shared with other streams (default: :attr:`engine`, else one of its own)."""
        _check_requests([request], "stream(request)")
        return open_stream(self, request, engine if engine is not None else self.engine)

    def speak(self, requests: list[SpeechRequest], engine: Engine | None = None) -> GenerationOutput:
        """Every request's audio at once, one output per request in order (``audio[i]``, ``words[i]``, ...).

        Each text is spoken as it would be alone: those that fit one generation side by side on
        the engine (default: :attr:`engine`), the others in segments; request i > 0 draws from
        generators derived from the first one's (``rng.derive(i)``)."""
        _check_requests(requests, "speak([requests])")
        if not requests:
            raise GenerationInputError("speak() needs at least one SpeechRequest")
        if not all(request.whole for request in requests):
            raise GenerationInputError("speak() takes whole texts; use stream(request) for text that arrives in pieces")
        engine = engine if engine is not None else self.engine
        self.require_decoder()
        for request in requests:
            warn_about_scripts(self, request.text)
        plans = [plan_request(self, request) for request in requests]  # every text checked before any work
        base = requests[0].rng(self.device)
        rngs = [base.derive(i) for i in range(len(requests))]
        outputs: list[GenerationOutput | None] = [None] * len(requests)
        whole = [i for i, plan in enumerate(plans) if isinstance(plan, GenerationPlan)]
        if whole:
            window = requests[whole[0]].window_size
            made = generate_utterances(self, [plans[i] for i in whole], [rngs[i] for i in whole], window, engine)
            for i, output in zip(whole, made):
                outputs[i] = output
        for i, plan in enumerate(plans):
            if isinstance(plan, LongFormPlan):
                outputs[i] = speak_whole(self, requests[i], plan, rngs[i], engine)
        return merge_outputs(outputs)


def _check_requests(requests: Any, call: str) -> None:
    if not isinstance(requests, list | tuple) or not all(isinstance(r, SpeechRequest) for r in requests):
        raise GenerationInputError(f"{call} takes SpeechRequest objects: SpeechRequest('Hello.', voice=prompt)")


# ``generate(model, prompt, text, ...)`` as a plain function, for callers that prefer one.
generate = TadaForCausalLM.generate
