"""Incremental text input: ``generate(text=<pieces>, stream=True)`` speaks the whole text's audio."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
import torch

from tadastream.demo import DEMO_VOICE_TEXT, demo_tokenizer
from tadastream.generation import GenerationInputError
from tadastream.model import generate
from tadastream.text import IncrementalText, model_text, tokenize_joint

TEXT = (
    'He said: "Wait -- the door\u2019s open!" then left; nobody moved. Really? (Yes.) '
    "It's 5 o'clock\u2014time to GO. Done"
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the demo model is tiny; more threads across worker threads only spin
    yield
    torch.set_num_threads(threads)


def chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def words(text: str) -> list[str]:
    parts = text.split(" ")
    return [p + " " for p in parts[:-1]] + [parts[-1]]


def speak(model, voice, text, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    with generate(model, voice, text, stream=True) as stream:
        return torch.cat([chunk for chunk, _ in stream])


@pytest.mark.parametrize("seed", [0, 17])
def test_pieces_give_the_whole_texts_audio(demo_model, demo_voice, seed):
    whole = speak(demo_model, demo_voice, TEXT, seed)
    for pieces in (chunks(TEXT, 1), chunks(TEXT, 3), chunks(TEXT, 7), words(TEXT)):
        audio = speak(demo_model, demo_voice, iter(pieces), seed)
        assert audio.shape == whole.shape and (audio - whole).abs().max() <= 1e-4, pieces[:3]


def test_slow_producer_audio_starts_before_the_text_ends(demo_model, demo_voice):
    text = " ".join([TEXT] * 2)
    pieces = words(text)
    yielded: list[float] = []

    def producer():
        for piece in pieces:
            time.sleep(0.05)
            yielded.append(time.perf_counter())
            yield piece

    torch.manual_seed(3)
    parts, sent_at_first = [], None
    with generate(demo_model, demo_voice, producer(), stream=True) as stream:
        for chunk, _ in stream:
            if sent_at_first is None:
                sent_at_first = len(yielded)
            parts.append(chunk)
        first_chunk_at = stream.started_at + stream.result.chunk_times[0]
    assert sent_at_first < len(pieces) and first_chunk_at < yielded[-1], (sent_at_first, len(pieces))
    assert (torch.cat(parts) - speak(demo_model, demo_voice, text, 3)).abs().max() <= 1e-4


def test_async_producer(demo_model, demo_voice):
    async def producer():
        for piece in words(TEXT):
            await asyncio.sleep(0.005)
            yield piece

    async def run():
        torch.manual_seed(5)
        with generate(demo_model, demo_voice, producer(), stream=True) as stream:
            return torch.cat([chunk async for chunk, _ in stream])

    audio = asyncio.run(run())
    assert (audio - speak(demo_model, demo_voice, TEXT, 5)).abs().max() <= 1e-4


@pytest.mark.parametrize("pieces", [[], ["   ", "\n", " "]])
def test_empty_piece_streams(demo_model, demo_voice, pieces):
    with pytest.raises(GenerationInputError, match="empty"):
        speak(demo_model, demo_voice, iter(pieces), 0)


def test_bad_pieces_and_sync_iteration_over_async_text(demo_model, demo_voice):
    with pytest.raises(TypeError):
        speak(demo_model, demo_voice, iter(["Hello ", 5, " there"]), 0)

    async def producer():
        yield "Hello there."

    with generate(demo_model, demo_voice, producer(), stream=True) as stream:
        with pytest.raises(TypeError, match="async for"):
            next(iter(stream))


FUZZ_TEXTS = [
    "Hello world.",
    "  leading and trailing spaces   ",
    'She said "hi"; he said "bye". then silence.',
    "Em\u2014dash, en\u2013dash and -- double dash - single.",
    "what? no! yes. maybe... ok",
    "Dr. Smith's cat (aged 3) ate 1,000 fish: $5.50 each, 50% off!",
    "ALL CAPS SHOUTING; then lower case. AND BACK",
    "don't won't it's 'quoted' words' ends",
    "multiple   spaces\tand\ttabs\nand\nnewlines",
    "\u201cCurly quotes\u201d and \u2018single\u2019 ones\u2026 then more.",
    "numbers 12345 and 3.14159 and 2024-01-01.",
    "a b c d e f g h i j k l m n o p",
    "Supercalifragilisticexpialidocious antidisestablishmentarianism.",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber stra\u00dfe.",
    "emoji \U0001f600 and symbols #hash @at &amp *star*",
    "x",
    "end with punctuation!!!   ",
    "Hi . , ? ! spaces before punctuation .",
    "semi;colon; without spaces;and; with",
    "\u00abGuillemets\u00bb and \u2039angles\u203a: done.",
]


@pytest.mark.parametrize("with_prompt", [True, False])
def test_incremental_ids_equal_the_whole_texts(with_prompt):
    tok = demo_tokenizer()
    prompt = DEMO_VOICE_TEXT if with_prompt else ""
    known = tok.encode(prompt.rstrip(), add_special_tokens=False) if with_prompt else []
    rng = random.Random(1234)
    for text in FUZZ_TEXTS:
        expected = tokenize_joint(tok, prompt, model_text(text), known or None)[len(known) :]
        for _ in range(8):
            cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 12))))
            pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
            inc = IncrementalText(tok, prompt, known or None)
            released = []
            for piece in pieces:
                released += inc.push(piece)
            released += inc.finish()
            assert released == inc.released == expected, (text, pieces)
