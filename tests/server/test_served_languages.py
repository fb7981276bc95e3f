"""Text as people have it, served: a paragraph in each of the ten languages with word timestamps (JSON,
SSE, the WebSocket); text with nothing to say refused alike by every front end; a hard-wrapped chapter
with CRLF line endings; and each voice's language in ``GET /v1/voices`` and in Wyoming's ``info``."""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import re

import pytest

from tadastream.config import SAMPLE_RATE
from tadastream.scripts import LANGUAGES
from tests.helpers.paths import FIXTURES
from tests.helpers.server_harness import demo_server
from tests.server.test_server import error_of, ws_speak
from tests.server.test_server_timestamps import sse_events, ws_session

TEXTS = FIXTURES / "texts"
LANGS = ("en", "ar", "zh", "de", "es", "fr", "it", "ja", "pl", "pt")
SEED = 13
NOTHING = ["😀😀🎉🎉", "!!! ... ???", "\u200b\u200b"]  # emoji, punctuation, zero-width spaces
LONG_WAIT = 300  # seconds: the JSON endpoint sends nothing until all the audio is made, on a busy machine too
_SENTENCE_END = re.compile(r"[.!?。！？]+[”\"»」』)]*(?=\s|$)|[。！？]")


def read(name: str) -> str:
    return (TEXTS / name).read_text(encoding="utf-8")


def opening(text: str, sentences: int = 1) -> str:
    """The first ``sentences`` sentences of ``text``."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[: ends[min(sentences, len(ends)) - 1]]


JA = opening(read("ja.txt"))  # one sentence, after a full-width space: 51 characters
ZH = opening(read("zh.txt"))  # one sentence: 18 characters


@pytest.fixture(scope="module")
def voices_dir(tmp_path_factory, demo_voice):
    """``ja.voice`` records Japanese; ``plain.voice`` records no language (as files made before it was recorded)."""
    folder = tmp_path_factory.mktemp("voices")
    dataclasses.replace(demo_voice, language="ja").save(folder / "ja.voice")
    dataclasses.replace(demo_voice, language=None).save(folder / "plain.voice")
    return folder


@pytest.fixture(scope="module")
def server(voices_dir):
    with demo_server(max_streams=12, queue=16, max_input_chars=20_000, voices_dir=str(voices_dir)) as live:
        yield live


def captioned(server, text: str, seed: int = SEED):
    """``POST /v1/audio/speech/with-timestamps`` for ``text`` (pcm)."""
    with server.client() as c:
        c.timeout = LONG_WAIT
        return c.post("/v1/audio/speech/with-timestamps", json={"input": text, "seed": seed, "response_format": "pcm"})


def caption_body(res) -> dict:
    """A with-timestamps answer's body, with the audio decoded to PCM16 bytes."""
    assert res.status_code == 200, res.text
    body = res.json()
    body["audio"] = base64.b64decode(body["audio"])
    assert body["sample_rate"] == SAMPLE_RATE and len(body["audio"]) > 0
    return body


def check_words(text: str, words: list[dict], seconds: float) -> None:
    """The words are pieces of ``text``, in order, and their times tile the audio."""
    assert words, "no words"
    for w in words:
        assert 0 <= w["char_start"] < w["char_end"] <= len(text), w
        assert text[w["char_start"] : w["char_end"]] == w["word"], w
        assert w["start"] <= w["end"], w
    for a, b in zip(words, words[1:]):
        assert a["char_end"] <= b["char_start"], (a, b)
        assert a["end"] == pytest.approx(b["start"], abs=1e-6), (a, b)
    assert words[0]["start"] == 0
    assert words[-1]["end"] == pytest.approx(seconds, abs=1e-6)


# -- a paragraph in each language, word by word ------------------------------------------------
@pytest.fixture(scope="module")
def paragraphs(server) -> dict:
    """Each language's whole paragraph file and the with-timestamps response to it (sent all at once)."""
    texts = {lang: read(f"{lang}.txt") for lang in LANGS}
    with concurrent.futures.ThreadPoolExecutor(len(texts)) as pool:
        answers = dict(zip(texts, pool.map(lambda text: captioned(server, text), texts.values())))
    return {lang: (texts[lang], answers[lang]) for lang in LANGS}


@pytest.mark.parametrize("lang", LANGS)
def test_a_paragraph_gets_words_that_tile_its_audio(paragraphs, lang):
    text, res = paragraphs[lang]
    body = caption_body(res)
    words = body["words"]
    check_words(text, words, len(body["audio"]) / 2 / SAMPLE_RATE)
    assert len(words) >= 20, f"{len(words)} words for a paragraph of {len(text)} characters"
    if lang in ("zh", "ja"):  # no spaces: the words are phrases (BudouX), not the whole paragraph or sentences
        assert max(len(w["word"]) for w in words) <= 12, [w["word"] for w in words if len(w["word"]) > 12]


@pytest.fixture(scope="module")
def ja_words(server) -> list[dict]:
    body = caption_body(captioned(server, JA))
    check_words(JA, body["words"], len(body["audio"]) / 2 / SAMPLE_RATE)
    assert len(body["words"]) >= 5, body["words"]
    return body["words"]


def test_sse_gives_the_json_endpoints_words_for_japanese(server, ja_words):
    with server.client() as c:
        body = {"input": JA, "seed": SEED, "response_format": "pcm", "stream_format": "sse", "timestamps": True}
        res = c.post("/v1/audio/speech", json=body)
    assert res.status_code == 200, res.text
    events = sse_events(res.text)
    assert events[-1]["type"] == "speech.audio.done"
    assert [w for e in events if e["type"] == "speech.audio.timestamps" for w in e["words"]] == ja_words


def test_websocket_japanese_in_three_character_pieces_gives_the_whole_texts_words(server, ja_words):
    received = ws_session(server, [JA[i : i + 3] for i in range(0, len(JA), 3)], SEED)
    messages = [m for m in received if not isinstance(m, tuple)]
    finals = [m["type"] for m in messages if m["type"] != "timestamps"]
    assert finals == ["audio.done", "result"], messages[-1]
    assert [w for m in messages if m["type"] == "timestamps" for w in m["words"]] == ja_words


# -- nothing to say ------------------------------------------------------------------------------
@pytest.mark.parametrize("text", NOTHING, ids=["emoji", "punctuation", "zero-width"])
def test_nothing_to_say_is_refused_by_http_sse_and_the_websocket(server, text):
    with server.client() as c:
        plain = c.post("/v1/audio/speech", json={"input": text, "seed": SEED, "response_format": "pcm"})
        sse = c.post("/v1/audio/speech", json={"input": text, "seed": SEED, "stream_format": "sse"})
    for res in (plain, sse):
        assert res.status_code == 400, res.text
        error = error_of(res)
        assert error["code"] == "empty_input" and error["param"] == "input", error
        assert "nothing to speak" in error["message"], error
    pcm, messages, _ = ws_speak(server, [text], SEED)
    assert pcm == b"" and [m["type"] for m in messages] == ["error"], messages
    error = messages[0]
    assert error["status"] == 400 and error["error"]["code"] == "empty_input" and error["error"]["param"] == "input"
    assert "nothing to speak" in error["error"]["message"], error


# -- a hard-wrapped chapter ----------------------------------------------------------------------
def chapter_head(chars: int = 1800) -> str:
    """The chapter's first paragraphs, ``chars`` characters or a little more, with CRLF line endings.

    Not the whole chapter: its ~11,200 characters (past the demo model's 4096 positions, so long form)
    make over 1,000 s of the demo model's audio: ~70 s for one request on a 2-core CPU, ~105 s with the
    SSE request beside it. Its first ~1,850 characters (a heading, a title, six paragraphs and an indented
    address; ~9 s here) fit one generation, so this is hard wrapping and CRLF in one request; long form
    through the server is test_server's test_a_text_longer_than_the_model_context_streams_in_segments
    (first chunk only)."""
    paragraphs = read("alice-ch2-pool-of-tears.txt").split("\n\n")
    taken = []
    while len("\n\n".join(taken)) < chars:
        taken.append(paragraphs[len(taken)])
    return "\n\n".join(taken).replace("\n", "\r\n")


def test_a_hard_wrapped_crlf_chapter_is_spoken(server):
    text = chapter_head()
    assert len(text) > 1800 and text.count("\r\n\r\n") >= 4 and text.count("\r\n") > 30
    assert "\n" not in text.replace("\r\n", "") and "\r" not in text.replace("\r\n", "")
    body = {"input": text, "seed": SEED, "response_format": "pcm"}
    head = b""
    with server.client() as c:
        c.timeout = LONG_WAIT
        with c.stream("POST", "/v1/audio/speech", json=body) as res:
            assert res.status_code == 200, res.read()
            for part in res.iter_raw():  # the first seconds, then hang up: the SSE request speaks it all
                head += part
                if len(head) >= 4 * SAMPLE_RATE:
                    break
        sse = c.post("/v1/audio/speech", json={**body, "stream_format": "sse"})
    assert len(head) >= 4 * SAMPLE_RATE, "the pcm audio ended after less than 2 s"
    assert sse.status_code == 200, sse.text
    events = sse_events(sse.text)
    assert events[-1]["type"] == "speech.audio.done" and events[-1]["usage"]["input_tokens"] > 0
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert len(audio) > 60 * 2 * SAMPLE_RATE, f"{len(audio) / 2 / SAMPLE_RATE:.1f} s for {len(text)} characters"
    assert audio.startswith(head), "same seed, same audio"


# -- voices and their languages ------------------------------------------------------------------
def test_voice_list_shows_each_voices_language(server):
    with server.client() as c:
        res = c.get("/v1/voices")
    assert res.status_code == 200
    voices = {v["id"]: v for v in res.json()["data"]}
    assert set(voices) == {"default", "ja", "plain"}
    assert voices["default"]["language"] == "en"
    assert voices["ja"]["language"] == "ja"
    assert "language" in voices["plain"] and voices["plain"]["language"] is None


@pytest.fixture(scope="module")
def wy():
    """The Wyoming test module (its LiveWyoming server and helpers)."""
    from tests.integrations import test_wyoming

    return test_wyoming


@pytest.fixture(scope="module")
def wyoming(wy, voices_dir):
    import torch

    from tadastream.integrations.wyoming import build_wyoming

    threads = torch.get_num_threads()
    tts = build_wyoming(model="demo", threads=1, voices=str(voices_dir), seed=SEED, max_streams=2)
    try:
        with wy.LiveWyoming(tts) as live:
            yield live
    finally:
        tts.close()
        torch.set_num_threads(threads)


def languages_advertised(wy, live) -> dict[str, list[str]]:
    from wyoming.info import Describe, Info

    async def go():
        async with live.client() as client:
            await client.write_event(Describe().event())
            return Info.from_event(await client.read_event())

    (program,) = wy.run(go()).tts
    return {v.name: v.languages for v in program.voices}


def test_wyoming_info_gives_each_voice_its_language(wy, wyoming, voices_dir):
    from tadastream.integrations.wyoming import build_wyoming

    checkpoint = list(wyoming.tts.service.model.languages)
    assert checkpoint == list(LANGUAGES) == list(LANGS), "the demo model claims all ten"
    assert languages_advertised(wy, wyoming) == {"default": ["en"], "ja": ["ja"], "plain": checkpoint}
    # --languages names the languages of the voices that record none; the others keep theirs
    tts = build_wyoming(model="demo", threads=1, voices=str(voices_dir), languages="de,fr")
    try:
        with wy.LiveWyoming(tts) as live:
            advertised = languages_advertised(wy, live)
    finally:
        tts.close()
    assert advertised == {"default": ["en"], "ja": ["ja"], "plain": ["de", "fr"]}


def test_wyoming_refuses_a_text_with_nothing_to_say(wy, wyoming):
    from wyoming.error import Error
    from wyoming.tts import Synthesize

    async def go():
        async with wyoming.client() as client:
            await client.write_event(Synthesize(text="😀").event())
            return await wy.read_until(client, "error")

    events = wy.run(go())
    assert [e.type for e in events] == ["error"], "refused before any audio"
    assert "nothing to speak" in Error.from_event(events[0]).text
    wyoming.wait_idle()


def test_wyoming_streams_chinese_in_pieces(wy, wyoming):
    from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop

    pieces = [ZH[i : i + 4] for i in range(0, len(ZH), 4)]

    async def go():
        async with wyoming.client() as client:
            await client.write_event(SynthesizeStart().event())
            for piece in pieces:
                await client.write_event(SynthesizeChunk(text=piece).event())
            await client.write_event(SynthesizeStop().event())
            streamed = await wy.read_until(client, "synthesize-stopped")
        async with wyoming.client() as client:
            await client.write_event(Synthesize(text=ZH).event())
            return streamed, await wy.read_until(client, "audio-stop")

    streamed, whole = wy.run(go())
    kinds = [e.type for e in streamed]
    assert kinds[0] == "audio-start" and kinds[-2:] == ["audio-stop", "synthesize-stopped"], kinds
    assert kinds.count("audio-start") == 1 and "error" not in kinds
    audio = wy.audio_of(streamed)
    assert len(audio) > 0 and audio == wy.audio_of(whole), "pieces give the audio of the whole text (server seed)"
    wyoming.wait_idle()


def test_opening_cuts_at_sentence_ends():
    assert opening("One. Two! Three?", 2) == "One. Two!"
    assert opening("一つ。二つ。三つ", 1) == "一つ。"
    assert ZH.endswith("。") and 10 < len(ZH) < 200 and JA.endswith("。") and 20 < len(JA) < 80
