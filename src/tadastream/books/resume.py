"""Resuming an interrupted book: what was spoken is kept beside the output, and a rerun goes on.

With ``--resume`` the narration goes to a folder beside the target (``book.m4b.partial/``) rather
than straight into the encoder: the book's audio so far as raw float32 (``audio.f32``), the
narrator's other events as JSON lines (``events.jsonl``), and ``state.json``: the last segment
whose audio and events are safely on disk, and the fingerprint of what is being made (the text,
voice, model, options and seed). A rerun with the same fingerprint cuts both files back to that
segment's end and speaks on from the next one; since every segment draws from its own
generators, the audio is that of an uninterrupted run. Once the last segment is in, the spool
is replayed into the real outputs (the same events the narrator yields) and removed.

A changed text, voice, model or option refuses to resume (:class:`ResumeError`), naming what
changed: a silent mix of two runs' audio would be worse than starting over.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..files import write_atomic
from ..timestamps import CharTiming, WordTiming
from .narrate import Audio, ChapterEnd, ChapterStart, Event, SegmentDone, Words

__all__ = ["ResumeError", "Spool", "fingerprint", "spool_folder"]

_BLOCK = 1 << 16  # samples per Audio event on replay


class ResumeError(ValueError):
    """An interrupted run that cannot be continued; the message says how to start over."""


def spool_folder(target: Path) -> Path:
    return target.with_name(target.name + ".partial")


def _digest(*parts: Any) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            part = part.detach().to("cpu").contiguous()
            hasher.update(str(part.dtype).encode())
            part = part.view(torch.uint8) if part.dtype == torch.bfloat16 else part
            hasher.update(part.numpy().tobytes())
        else:
            hasher.update(json.dumps(part, sort_keys=True, default=str, ensure_ascii=False).encode())
        hasher.update(b"\0")
    return hasher.hexdigest()[:16]


def fingerprint(book, request, model_name: str, output: str) -> dict[str, str]:
    """What must not change between an interrupted run and its continuation, part by part, so a
    refusal can say which part changed."""
    voice = request.voice
    tensors = [getattr(voice, n) for n in ("token_values", "token_positions", "text_tokens") if voice is not None]
    return {
        "text": _digest([(c.title, c.text) for c in book.chapters]),
        "voice": _digest(*[t for t in tensors if isinstance(t, torch.Tensor)]),
        "model": model_name,
        "options": _digest(request.options, request.layout, request.segment_chars),
        "seed": str(request.seed),
        "output": output,
    }


_CHANGED = {
    "text": "the text (or the chapters chosen)",
    "voice": "the voice",
    "model": "the model",
    "options": "the generation options",
    "seed": "the seed",
    "output": "the kind of output",
}


class Spool:
    """The folder an interrupted book is kept in; see the module docstring."""

    def __init__(self, target: Path, fingerprint: dict[str, str]):
        self.folder = spool_folder(target)
        self.fingerprint = fingerprint
        self.done = -1  # the last segment safely on disk
        self.samples = 0
        self.tokens = 0
        self._events_bytes = 0
        self._audio: Any = None
        self._events: Any = None

    @property
    def started(self) -> bool:
        return self.done >= 0

    def open(self, seed: int | None) -> int:
        """Open for writing, continuing a previous run's spool when there is one; returns the seed
        to speak with (the previous run's when ``seed`` is None). ResumeError when the previous
        run made something else."""
        state_file = self.folder / "state.json"
        if state_file.exists():
            try:
                state = json.loads(state_file.read_text(encoding="utf-8"))
                previous = state["fingerprint"]
                done, samples, tokens, size = state["done"], state["samples"], state["tokens"], state["events_bytes"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ResumeError(
                    f"--resume: {state_file} is unreadable ({exc}); remove {self.folder} to start over"
                ) from None
            if seed is None:
                self.fingerprint = {**self.fingerprint, "seed": previous.get("seed", "")}
            changed = [_CHANGED.get(k, k) for k in self.fingerprint if previous.get(k) != self.fingerprint[k]]
            if changed:
                raise ResumeError(
                    f"--resume: {', '.join(changed)} changed since the interrupted run kept in {self.folder}; "
                    "run it as it was, or remove that folder (or drop --resume) to start over"
                )
            self.done, self.samples, self.tokens, self._events_bytes = done, samples, tokens, size
        self.folder.mkdir(parents=True, exist_ok=True)
        self._audio = open(self.folder / "audio.f32", "ab+")  # noqa: SIM115 - held open across the book
        self._events = open(self.folder / "events.jsonl", "ab+")  # noqa: SIM115
        # what an interrupted segment had written past the last safe point goes
        self._audio.truncate(self.samples * 4)
        self._events.truncate(self._events_bytes)
        if not state_file.exists():
            self._save()
        return int(self.fingerprint["seed"])

    def write(self, event: Event) -> None:
        """Keep one narrator event; a SegmentDone makes everything so far safe."""
        if isinstance(event, Audio):
            if event.gap:
                self._line({"gap": event.samples.numel(), "at": self._written()})
            self._audio.write(event.samples.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        elif isinstance(event, ChapterStart):
            self._line({"chapter": event.index, "title": event.title, "at": self._written()})
        elif isinstance(event, Words):
            words = [[w.word, w.start, w.end, w.char_start, w.char_end] for w in event.words]
            chars = [[c.char, c.start, c.end, c.index] for c in event.characters]
            self._line({"words": event.chapter, "w": words, "c": chars, "at": self._written()})
        elif isinstance(event, ChapterEnd):
            self._line({"end": event.index, "samples": event.samples, "at": self._written()})
        elif isinstance(event, SegmentDone):
            self._line({"done": event.index, "tokens": event.tokens, "at": self._written()})
            for handle in (self._audio, self._events):
                handle.flush()
                os.fsync(handle.fileno())
            self.done, self.samples, self.tokens = event.index, event.samples, event.tokens
            self._events_bytes = self._events.tell()
            self._save()

    def _written(self) -> int:
        return self._audio.tell() // 4

    def _line(self, entry: dict) -> None:
        self._events.write((json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8"))

    def _save(self) -> None:
        state = {
            "fingerprint": self.fingerprint,
            "done": self.done,
            "samples": self.samples,
            "tokens": self.tokens,
            "events_bytes": self._events_bytes,
        }
        write_atomic(self.folder / "state.json", json.dumps(state, indent=1).encode("utf-8"))

    def close(self) -> None:
        for handle in (self._audio, self._events):
            if handle is not None:
                handle.close()
        self._audio = self._events = None

    def replay(self) -> Iterator[Event]:
        """The kept events again, audio read back in blocks: what the narrator yielded, in order."""
        self.close()
        with open(self.folder / "audio.f32", "rb") as audio, open(self.folder / "events.jsonl", "rb") as events:
            position = 0

            def audio_to(at: int, gap: bool = False) -> Iterator[Audio]:
                nonlocal position
                while position < at:
                    n = min(_BLOCK, at - position)
                    block = np.frombuffer(audio.read(n * 4), dtype=np.float32)
                    position += n
                    yield Audio(torch.from_numpy(block.copy()), gap=gap)

            for line in events:
                entry = json.loads(line)
                yield from audio_to(entry["at"])
                if "gap" in entry:
                    yield from audio_to(entry["at"] + entry["gap"], gap=True)
                elif "chapter" in entry:
                    yield ChapterStart(entry["chapter"], entry["title"])
                elif "words" in entry:
                    words = [WordTiming(w, s, e, a, b) for w, s, e, a, b in entry["w"]]
                    yield Words(entry["words"], words, [CharTiming(c, s, e, i) for c, s, e, i in entry["c"]])
                elif "end" in entry:
                    yield ChapterEnd(entry["end"], entry["samples"])
                elif "done" in entry:
                    yield SegmentDone(entry["done"], entry["tokens"], entry["at"])
            yield from audio_to(self.samples)

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)
