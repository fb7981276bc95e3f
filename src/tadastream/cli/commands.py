"""What each subcommand does: check every argument, then load, generate and deliver.

Heavy modules (torch, the model) are imported inside the handlers, after the checks, so a
mistake on the command line is reported at once and ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from ..captions import SUBTITLE_FORMATS
from ..config import DEFAULT_CODEC, QUANTIZE_ACTIVATIONS, SAMPLE_RATE
from ..loading import DEMO
from ..scripts import canonical_language
from .book import check_book_run, is_book_run, run_book
from .checks import (
    VoiceRequest,
    check_folder,
    check_language,
    check_output_file,
    check_player,
    check_recording,
    check_source,
    check_text_output,
    check_timeline,
    check_voice,
    output_path,
    pick_device,
    read_text,
    read_text_file,
)
from .errors import CliError, Interrupted, UsageError, one_line
from .progress import BookProgress, Progress
from .sinks import FileSink, NullSink, PlayerSink, StdoutSink

STDOUT_FORMATS = ("wav", "raw")

DEMO_NOTICE = (
    "note: the demo model has random weights, so its audio is noise-like; it shows the streaming machinery "
    "(timings, chunking, file output), not speech quality."
)


def _load_model(args: argparse.Namespace, device: str, progress: Progress, max_streams: int = 1):
    """(model, default voice) for ``--model``; a checkpoint that cannot be had is one line with the demo hint."""
    from ..hub import CheckpointError
    from ..loading import choose_dtype, load_model

    if args.model != DEMO:
        _dtype, why = choose_dtype(args.dtype, device, args.quantize)
        progress.note(f"loading {args.model} ({why}) ...")
    try:
        return load_model(
            args.model,
            codec=args.codec,
            tokenizer=args.tokenizer,
            device=device,
            dtype=args.dtype,
            quantize=args.quantize,
            compile=args.compile,
            warmup=args.warmup,
            max_streams=max_streams,
            max_positions=args.max_positions,
        )
    except CheckpointError as exc:
        raise CliError(f"{one_line(exc)} (to try the pipeline without a download: --model demo)") from None


def _encode_recording(voice: VoiceRequest, codec: str, language: str | None, tokenizer, device: str, progress):
    """``voice``'s recording through the codec encoder and aligner (``demo``: the embedded tiny ones)."""
    if codec == DEMO:
        from ..demo import build_demo_encoder

        encoder = build_demo_encoder()
    else:
        from ..codec.encoder import Encoder

        progress.note(f"encoding the voice {voice.path} with {codec} ...")
        encoder = Encoder.from_pretrained(codec, subfolder="encoder", language=language, tokenizer=tokenizer)
    encoder.language = canonical_language(language or "en")  # recorded in the voice
    encoder.to(device)
    return encoder(voice.audio, text=[voice.text], sample_rate=voice.sample_rate)


def _speech_request(args: argparse.Namespace, text: str):
    """The SpeechRequest ``speak`` makes of its flags (its voice comes once loaded); a bad value is a
    usage error. Without --seed one is drawn, and reported so the audio can be made again."""
    from ..generation import GenerationInputError, InferenceOptions, SpeechRequest, TextLayout

    try:
        options = InferenceOptions(
            text_temperature=args.temperature,
            acoustic_cfg_scale=args.cfg_scale,
            num_flow_matching_steps=args.flow_steps,
            noise_temperature=args.noise_temperature,
            speed_up_factor=args.speed,
        )
        return SpeechRequest(
            text,
            options=options,
            layout=TextLayout(num_transition_steps=args.transition_steps, normalize_text=not args.no_normalize),
            seed=args.seed if args.seed is not None else secrets.randbelow(2**31),
            long_form=True if args.long_form else None,
            min_first_chunk_ms=args.min_first_chunk_ms,
        )
    except GenerationInputError as exc:
        raise UsageError(one_line(exc)) from None


def _stream(model, speech, progress: Progress):
    """An AudioStream of the SpeechRequest ``speech`` (a LongFormStream for a text too long for one
    generation) that also reports each settled token of the new text to ``progress``."""
    from ..drivers.longform import open_stream

    stream = open_stream(model, speech)
    stream.on_token = lambda _step: progress.token()
    progress.total_tokens = stream.tokens_total or 0
    return stream


def _generate(model, speech, sink, progress: Progress, captions: Callable[[list, list, float], None] | None = None):
    """Stream the SpeechRequest ``speech`` into ``sink`` and close it; returns (result, audio
    seconds). ``captions(words, characters, seconds)`` then gets the word times, or those of the
    audio kept after Ctrl-C (raised as :class:`Interrupted`): the audio is safe before any other
    file is tried."""
    stream = _stream(model, speech, progress)
    progress.start = stream.started_at
    warned = not getattr(sink, "streaming", False)  # only a player that plays as audio comes can run dry
    try:
        with stream:
            for chunk, _rate in stream:
                sink.write(chunk)
                progress.chunk(int(chunk.numel()))
                if not warned and (speed := stream.realtime_factor) is not None and speed < 1:
                    warned = True
                    progress.note(
                        f"note: audio is being made at {speed:.2f}x real time, so playback will pause; "
                        "write a file with -o, or play without --stream (after generation)"
                    )
    except KeyboardInterrupt:
        progress.clear()
        kept = sink.interrupted()  # what was made so far stays a valid file
        if captions is not None:  # and its captions match it
            from ..timestamps import words_heard

            heard = sum(stream.chunk_samples) / SAMPLE_RATE
            captions(words_heard(list(stream.words), heard), [], heard)
        raise Interrupted(kept or "interrupted") from None
    progress.clear()
    if stream.result is None:
        raise CliError("generation stopped before it finished; rerun with --debug to see why")
    sink.close()
    seconds = sum(stream.result.chunk_samples or [0]) / SAMPLE_RATE
    if captions is not None:
        result = stream.result
        captions(result.words[0] if result.words else [], result.characters[0] if result.characters else [], seconds)
    return stream.result, seconds


class _Extras:
    """The files written beside the audio (--subtitles, --timestamps, --timeline), after it and each
    on its own: one that cannot be written loses neither the audio nor the others. ``written`` and
    ``failed`` say how each went, for the summary and the one error line."""

    def __init__(
        self,
        text: str = "",
        seed: int = 0,
        subtitles: Path | None = None,
        timestamps: Path | None = None,
        timeline: Path | None = None,
    ):
        self.text, self.seed = text, seed
        self.subtitles, self.timestamps, self.timeline = subtitles, timestamps, timeline
        self.written: list[str] = []
        self.failed: list[str] = []

    @property
    def wants_captions(self) -> bool:
        return self.subtitles is not None or self.timestamps is not None

    def _write(self, flag: str, path: Path | None, write: Callable[[Path], object]) -> None:
        if path is None:
            return
        try:
            write(path)
        except (OSError, ValueError) as exc:
            self.failed.append(f"{flag} {path} ({getattr(exc, 'strerror', None) or one_line(exc)})")
        else:
            self.written.append(f"{flag.lstrip('-')} {path}")

    def captions(self, words: list, characters: list, seconds: float) -> None:
        """What ``_generate`` calls with the word times, once the audio is written."""
        from ..captions import subtitles, timestamps_json, write_text_atomic

        def write_timestamps(path: Path) -> None:
            write_text_atomic(path, timestamps_json(self.text, words, characters, seconds, seed=self.seed))

        self._write("--subtitles", self.subtitles, lambda path: write_text_atomic(path, subtitles(path, words)))
        self._write("--timestamps", self.timestamps, write_timestamps)

    def draw(self, result) -> None:
        """The --timeline picture of a finished ``result``."""
        if self.timeline is not None:
            from ..timeline import plot_timeline

            self._write("--timeline", self.timeline, lambda path: plot_timeline(result, path, SAMPLE_RATE))

    def check(self, audio: str | None = None) -> None:
        """Raise the one error line when a file failed, saying where the ``audio``, kept all the same, is."""
        if self.failed:
            raise CliError(f"could not write {'; '.join(self.failed)}" + (f"; {audio}" if audio else ""))


def _timings(result, seconds: float) -> tuple[str, str, str]:
    wall = result.total_time or 0.0
    first = f"{result.time_to_first_audio:.3f} s" if result.time_to_first_audio is not None else "n/a (no audio)"
    speed = f"{seconds / wall:.2f}x real time" if wall > 0 else "n/a"
    rtf = f"{wall / seconds:.3f}" if seconds > 0 else "n/a"
    return first, speed, rtf


def _playable(result) -> str:
    """When a listener could start, and what starting on the first chunk would have cost."""
    first, playable = result.time_to_first_audio, result.time_to_playable_audio
    if first is None or playable is None:
        return "n/a (no audio)"
    if not result.stall_count:
        return f"{playable:.3f} s (plays through from the first chunk)"
    return (
        f"{playable:.3f} s: a player needs {playable - first:.2f} s of buffering; starting on the first chunk "
        f"it pauses {result.stall_count} time(s), {result.stall_time:.2f} s in all"
    )


class _SpeakRequest(NamedTuple):
    """What ``tadastream speak`` was asked, checked; nothing is loaded yet."""

    speech: Any  # the SpeechRequest, its voice added once it is loaded or encoded
    to_stdout: bool  # -o -: the audio goes to stdout
    output: Path | None  # -o FILE (None: stdout, or the player)
    timeline: Path | None
    subtitles: Path | None
    timestamps: Path | None
    voice: VoiceRequest | None  # None: the model's own voice
    device: str


def cmd_speak(args: argparse.Namespace) -> int:
    """``tadastream speak``: check everything (nothing is loaded before), then the voice, the
    generation and the report. A file read into files is a book run (:mod:`.book`)."""
    if is_book_run(args):
        return _speak_book(args)
    request = _check_speak(args)
    progress = Progress(enabled=not args.quiet)  # stderr: with -o - too, the audio goes to stdout
    sink = _speak_sink(args, request)

    import torch

    speech = request.speech
    extras = _Extras(speech.text, speech.seed, request.subtitles, request.timestamps, request.timeline)
    torch.manual_seed(speech.seed)  # a recording is encoded the same way every time
    model, prompt = _speak_voice(args, request, progress)
    result, seconds = _speak_generate(args.stream, model, speech.with_voice(prompt), sink, progress, extras)
    _speak_report(request, result, seconds, extras, progress)
    return 0


def _speak_book(args: argparse.Namespace) -> int:
    """``speak -f FILE -o OUT``: the book and its outputs checked, then the voice, then the narration."""
    run = check_book_run(args)
    if run is None:  # --list-chapters
        return 0
    voice = _speak_voice_request(args)
    speech = _speech_request(args, run.book.chapters[0].text)  # the chapters bring their own text
    device = _speak_device(args)
    progress = BookProgress(enabled=not args.quiet)

    import torch

    torch.manual_seed(speech.seed)  # a recording is encoded the same way every time
    request = _SpeakRequest(speech, False, run.target, None, None, None, voice, device)
    model, prompt = _speak_voice(args, request, progress, max_streams=run.parallel)
    return run_book(args, run, speech.with_voice(prompt), model, progress)


# -- cmd_speak's phases: the checks, the voice, the generation, the report -------------------------


def _check_speak(args: argparse.Namespace) -> _SpeakRequest:
    """``speak``'s command line checked, in the order its errors are reported: the words, where the
    audio and the other files go, the model and its voice, the options and the device."""
    text = _speak_text(args)
    to_stdout, output = _speak_destination(args)
    timeline = check_timeline(args.timeline)
    subtitles_file = check_text_output(args.subtitles, "--subtitles", tuple(SUBTITLE_FORMATS))
    timestamps_file = check_text_output(args.timestamps, "--timestamps", (".json",))
    voice = _speak_voice_request(args)
    speech = _speech_request(args, text)
    device = _speak_device(args)
    return _SpeakRequest(speech, to_stdout, output, timeline, subtitles_file, timestamps_file, voice, device)


def _speak_text(args: argparse.Namespace) -> str:
    """The words to speak: TEXT, stdin (-) or -f FILE, exactly one of them."""
    if args.text is None and args.file is None:
        raise UsageError("no text: give the words to speak as TEXT, - to read them from stdin, or -f FILE")
    if args.text is not None and args.file is not None:
        raise UsageError("give the words either as TEXT or with -f FILE, not both")
    return read_text(args.text) if args.file is None else read_text_file(args.file)


def _speak_destination(args: argparse.Namespace) -> tuple[bool, Path | None]:
    """(to stdout, the audio file): -o -, -o FILE, or the player (which must be at hand)."""
    to_stdout = args.output == "-"
    output = None if args.output is None or to_stdout else check_output_file(args.output)
    if args.format is not None and not to_stdout:
        raise UsageError("--format is for -o - (stdout); a file's format comes from its extension (.wav, .flac, .ogg)")
    if to_stdout and args.format not in (None, *STDOUT_FORMATS):
        raise UsageError(f"--format {args.format}: stdout takes {' or '.join(STDOUT_FORMATS)}")
    if to_stdout and sys.stdout.isatty():
        raise UsageError(
            "-o - would write binary audio to the terminal: pipe it (| ffplay -nodisp -autoexit -) or use -o out.wav"
        )
    if args.output is None:
        check_player()
    return to_stdout, output


def _speak_voice_request(args: argparse.Namespace) -> VoiceRequest | None:
    """The sources of --model, --codec and --tokenizer, --language, and the --voice to speak in
    (None: the model's own, which only the demo model has)."""
    demo = args.model == DEMO
    if demo and args.tokenizer is not None:
        raise UsageError("--tokenizer does not apply to --model demo (it has its own tokenizer)")
    check_source(args.model, "--model", "TADA checkpoint")
    check_source(args.codec, "--codec", "codec")
    check_source(args.tokenizer, "--tokenizer", "tokenizer")
    check_language(args.language)
    voice = check_voice(args.voice, args.voice_text)
    if voice is None and not demo:
        raise UsageError(
            f"{args.model} has no built-in voice: pass --voice FILE.wav --voice-text 'its transcript', "
            "or --voice NAME.voice from `tadastream encode-voice` (or use --model demo)"
        )
    if args.codec == DEMO and not demo:
        raise UsageError(
            f"--codec demo belongs to --model demo; {args.model} needs its own codec (or leave --codec out)"
        )
    return voice


def _speak_device(args: argparse.Namespace) -> str:
    """--device, and a --quantize (with its --dtype) that can run on it."""
    device = pick_device(args.device)
    if args.quantize and not str(device).startswith("cpu"):
        raise UsageError(f"--quantize {args.quantize} speeds up CPU only: drop it with --device {device}")
    if args.quantize and args.dtype not in ("auto", QUANTIZE_ACTIVATIONS[args.quantize]):
        runs_in = QUANTIZE_ACTIVATIONS[args.quantize]
        raise UsageError(f"--quantize {args.quantize} runs in {runs_in}: drop --dtype {args.dtype}")
    return device


def _speak_sink(args: argparse.Namespace, request: _SpeakRequest):
    """Where the audio goes: stdout or a file; None for the player, opened once the model is ready."""
    if request.to_stdout:
        return StdoutSink(args.format or "wav", streaming=args.stream)
    if request.output is not None:
        return FileSink(request.output)
    return None


def _speak_voice(args: argparse.Namespace, request: _SpeakRequest, progress: Progress, max_streams: int = 1):
    """(the model, the prompt to speak in): the model's own voice, an encoded one, or a recording encoded now."""
    model, default_voice = _load_model(args, request.device, progress, max_streams)
    voice = request.voice
    if voice is None:
        return model, default_voice
    if voice.encoded is not None:
        return model, voice.encoded
    # The LLM's own tokenizer: the prompt's tokens must be the ones the LLM reads.
    codec = args.codec or (DEMO if args.model == DEMO else DEFAULT_CODEC)
    return model, _encode_recording(voice, codec, args.language, model.tokenizer, request.device, progress)


def _speak_generate(streaming: bool, model, speech, sink, progress: Progress, extras: _Extras):
    """(result, audio seconds) of speaking the SpeechRequest ``speech`` into ``sink`` (None: the
    player, opened now, playing as audio comes when ``streaming``); a failure aborts a file or the
    player, Ctrl-C keeps what was made."""
    if sink is None:
        try:
            sink = PlayerSink(streaming=streaming)
        except Exception as exc:  # noqa: BLE001 - PortAudioError is not a ValueError/OSError
            raise CliError(f"cannot open the audio output ({one_line(exc)}); write a file with -o out.wav") from None
    try:
        return _generate(model, speech, sink, progress, extras.captions if extras.wants_captions else None)
    except Interrupted as stop:  # the audio kept is already closed; the one line also names a file that failed
        if extras.failed:
            raise Interrupted(f"{stop}; could not write {'; '.join(extras.failed)}") from None
        raise
    except BaseException:
        if isinstance(sink, PlayerSink | FileSink):
            sink.abort()
        raise


def _speak_report(request: _SpeakRequest, result, seconds: float, extras: _Extras, progress: Progress):
    """The --timeline picture, the summary line, and the one error line for a file that failed."""
    extras.draw(result)
    first, speed, rtf = _timings(result, seconds)
    output, to_stdout = request.output, request.to_stdout
    where = f"wrote {output}" if output is not None else ("stdout" if to_stdout else "played")
    progress.note(
        f"{where}: {seconds:.2f} s of audio in {result.total_time:.2f} s ({speed}); first audio after {first}, "
        f"playable after {_playable(result)}; seed {request.speech.seed}"
        + "".join(f"; {extra}" for extra in extras.written)
    )
    extras.check(
        f"the audio is in {output}" if output is not None else f"the audio {'went to' if to_stdout else 'was'} {where}"
    )


def cmd_encode_voice(args: argparse.Namespace) -> int:
    """``tadastream encode-voice``: recording + transcript -> NAME.voice (atomic write)."""
    target = output_path(args.output, "-o", "me.voice")
    if target.suffix.lower() != ".voice":
        raise UsageError(f"-o {args.output}: name the encoded voice NAME.voice (e.g. -o {target.stem or 'me'}.voice)")
    check_folder(target, "-o")
    check_source(args.codec, "--codec", "codec")
    check_source(args.tokenizer, "--tokenizer", "tokenizer")
    check_language(args.language)
    voice = check_recording(Path(args.audio).expanduser(), args.text, "FILE", "--text")
    if args.codec == DEMO and args.tokenizer is not None:
        raise UsageError("--tokenizer does not apply to --codec demo (it has its own tokenizer)")
    device = pick_device(args.device)

    progress = Progress(enabled=not args.quiet)
    from ..hub import CheckpointError

    try:
        encoded = _encode_recording(voice, args.codec, args.language, args.tokenizer, device, progress)
    except CheckpointError as exc:
        raise CliError(one_line(exc)) from None
    from safetensors import SafetensorError

    try:
        encoded.save(target)
    except (OSError, SafetensorError) as exc:  # the folder went away, or the disk filled up, since the check
        raise CliError(f"-o {target}: could not write the voice ({one_line(exc)}); choose another place") from None
    tokens = int(encoded.text_tokens_len[0]) if encoded.text_tokens_len is not None else encoded.token_values.shape[1]
    progress.note(
        f"wrote {target}: {voice.audio.numel() / voice.sample_rate:.2f} s of speech in {encoded.language}, "
        f"{tokens} tokens aligned; "
        f"use it with: tadastream speak 'Hello.' --voice {target}"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``tadastream demo``: the embedded tiny model end to end, with timings on stdout."""
    text = read_text(args.text, "--text")
    output = check_output_file(args.output) if args.output is not None else None
    timeline = check_timeline(args.timeline)
    device = pick_device(args.device or "cpu")

    from ..generation import SpeechRequest
    from ..loading import load_model

    speech = SpeechRequest(text, seed=args.seed, min_first_chunk_ms=args.min_first_chunk_ms)
    show = (lambda *_a, **_k: None) if args.quiet else print
    show(DEMO_NOTICE, flush=True)
    model, prompt = load_model(DEMO, device=device)
    sink = FileSink(output) if output is not None else NullSink()
    try:
        result, seconds = _generate(model, speech.with_voice(prompt), sink, Progress(enabled=False))
    except BaseException:  # a file kept on Ctrl-C is already closed: abort leaves it
        sink.abort()
        raise
    first, speed, rtf = _timings(result, seconds)
    show(f"text: {text!r}")
    show(f"audio: {seconds:.2f} s at {SAMPLE_RATE} Hz in {len(result.chunk_samples or [])} chunks")
    show(f"time to first audio: {first}")
    show(f"time to playable audio: {_playable(result)}")
    show(f"total time: {result.total_time:.3f} s")
    show(
        f"speed: {speed} (audio seconds / wall seconds); real-time factor {rtf} "
        "(wall seconds / audio seconds, below 1 keeps ahead of playback)"
    )
    if output is not None:
        show(f"wrote {output}")
    extras = _Extras(timeline=timeline)
    extras.draw(result)
    if extras.written:
        show(f"wrote {timeline}")
    if output is None and timeline is None:
        show("pass -o demo.wav to keep the audio, --timeline timeline.png to see the chunk timings")
    extras.check(f"the audio is in {output}" if output is not None else None)
    return 0


def _run_service(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """A long-running service of another package part: a missing extra or a bad option is a usage
    error (nothing started), a deployment that Ray cannot bring up a failure."""
    from ..deploy.ray import DeploymentFailed
    from ..optionsets import OptionError

    try:
        return run(args)
    except (ImportError, OptionError) as exc:
        raise UsageError(one_line(exc)) from None
    except DeploymentFailed as exc:
        raise CliError(one_line(exc)) from None


def cmd_wyoming(args: argparse.Namespace) -> int:
    """``tadastream wyoming``: serve the Wyoming protocol until interrupted."""
    from ..integrations.wyoming import run_wyoming

    return _run_service(run_wyoming, args)


def cmd_ray(args: argparse.Namespace) -> int:
    """``tadastream ray``: the server as a Ray Serve deployment, until interrupted."""
    from ..deploy.ray import run_ray

    return _run_service(run_ray, args)


def cmd_serve(args: argparse.Namespace) -> int:
    """``tadastream serve``: hand the parsed options to the server; a bad option, a checkpoint folder
    that does not exist or a missing server package is a usage error (nothing loaded), as for ``speak``,
    ``wyoming`` and ``ray``."""
    check_source(args.model, "--model", "TADA checkpoint")
    check_source(args.codec, "--codec", "codec")
    check_source(args.tokenizer, "--tokenizer", "tokenizer")
    check_source(args.encoder, "--encoder", "codec")
    from ..server import run_server

    return _run_service(run_server, args)
