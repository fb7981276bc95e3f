"""The ``tadastream`` command: ``speak``, ``encode-voice`` and ``demo``.

Every argument is checked before a model is loaded (loading takes seconds to minutes), so a typo
costs nothing. User errors end the program with one ``error: ...`` line on stderr that says how
to fix it: exit status 2 when the command line is wrong and nothing ran, 1 when something failed
while running. Unexpected exceptions are bugs: a one-line summary, or the traceback with ``--debug``.

Audio on stdout (``-o -``) is the only thing written there, so it can be piped to a player; all
progress and reports go to stderr (``demo`` reports on stdout, it writes no audio there).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from . import __version__
from .server import add_serve_arguments

DEFAULT_MODEL = "HumeAI/tada-1b"
DEFAULT_CODEC = "HumeAI/tada-codec"  # = model.DEFAULT_CODEC; repeated so --help needs no torch import
DEMO = "demo"
SAMPLE_RATE = 24000
FILE_EXTENSIONS = ("wav", "flac", "ogg", "opus", "mp3")
STDOUT_FORMATS = ("wav", "raw")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEMO_TEXT = "Streaming speech starts playing while the rest of the sentence is still being generated."
DEMO_NOTICE = (
    "note: the demo model has random weights, so its audio is noise-like; it shows the streaming machinery "
    "(timings, chunking, file output), not speech quality."
)
# argparse defaults = InferenceOptions defaults (tests check they agree); kept here for a torch-free --help.
OPTION_DEFAULTS = {
    "temperature": 0.6,
    "cfg_scale": 1.6,
    "flow_steps": 10,
    "noise_temperature": 0.9,
    "transition_steps": 5,
}


class UsageError(Exception):
    """The command line cannot work as given; nothing was run (exit status 2)."""


class CliError(Exception):
    """Something failed while running (exit status 1); the message says what to do."""


def _one_line(message: object) -> str:
    return " ".join(str(message).split())


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# argument parsing


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``error: <what>; see `<prog> --help```, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {_one_line(message)}; see `{self.prog} --help`\n")


def _number(kind: type, low: float, low_ok: bool, what: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low or (value == low and not low_ok) or value != value:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive = _number(float, 0.0, False, "a number > 0")
_non_negative = _number(float, 0.0, True, "a number >= 0")
_positive_int = _number(int, 1, True, "a whole number >= 1")
_non_negative_int = _number(int, 0, True, "a whole number >= 0")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show the full traceback of any error")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        metavar="ID|DIR|demo",
        help=f"TADA checkpoint: hub id, local directory, or 'demo' for the embedded tiny model ({DEFAULT_MODEL})",
    )
    g.add_argument(
        "--codec", metavar="ID|DIR", help=f"codec with decoder/ (and encoder/ + aligner/) (default {DEFAULT_CODEC})"
    )
    g.add_argument(
        "--tokenizer", metavar="ID|DIR", help="Llama 3 tokenizer (default: the checkpoint's, else meta-llama's)"
    )
    g.add_argument("--device", metavar="DEV", help="cpu, cuda, cuda:1, mps ... (default: cuda if available, else cpu)")
    g.add_argument(
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="weights precision (default auto: bfloat16 on cuda, else float32)",
    )
    g.add_argument(
        "--quantize",
        choices=("int8",),
        help="int8 weights for the LLM and flow head (CPU, bfloat16): half the memory, small deviation",
    )


def _add_generation_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation")
    g.add_argument("--seed", type=int, metavar="N", help="random seed, for reproducible output")
    g.add_argument(
        "--temperature",
        type=_positive,
        default=OPTION_DEFAULTS["temperature"],
        metavar="T",
        help="text sampling (%(default)s)",
    )
    g.add_argument(
        "--cfg-scale",
        type=_positive,
        default=OPTION_DEFAULTS["cfg_scale"],
        metavar="S",
        help="acoustic guidance (%(default)s)",
    )
    g.add_argument(
        "--flow-steps",
        type=_positive_int,
        default=OPTION_DEFAULTS["flow_steps"],
        metavar="N",
        help="flow-matching steps (%(default)s)",
    )
    g.add_argument(
        "--noise-temperature",
        type=_non_negative,
        default=OPTION_DEFAULTS["noise_temperature"],
        metavar="T",
        help="acoustic noise scale (%(default)s)",
    )
    g.add_argument("--speed", type=_positive, metavar="FACTOR", help="speak faster (>1) or slower (<1); two passes")
    g.add_argument(
        "--transition-steps",
        type=_non_negative_int,
        default=OPTION_DEFAULTS["transition_steps"],
        metavar="N",
        help="prompt tokens re-generated to blend into the new text (%(default)s)",
    )
    g.add_argument(
        "--no-normalize",
        action="store_true",
        help="speak the text as written (skip punctuation and casing normalisation)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The full command-line grammar (no heavy imports: ``--help`` is instant)."""
    parser = _Parser(
        prog="tadastream",
        description="TADA text-to-speech with true streaming: audio starts while the text is still being spoken.",
        epilog="Try it without a download: tadastream demo -o demo.wav",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    speak = sub.add_parser(
        "speak",
        help="speak text to a file, stdout or the sound card",
        description="Speak TEXT in a voice. Without -o the audio plays on the sound card (needs tadastream[play]).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  tadastream speak 'Hello there.' --voice me.wav --voice-text 'What I say in me.wav.' -o hello.wav\n"
            "  tadastream speak 'Hello there.' --voice me.voice --stream              # play as it arrives\n"
            "  tadastream speak 'Hello there.' --voice me.voice --stream -o - | ffplay -nodisp -autoexit -\n"
            "  echo 'Hello there.' | tadastream speak - --voice me.voice --stream -o - --format raw \\\n"
            "      | aplay -f S16_LE -r 24000 -c 1\n"
            "  tadastream speak 'Hello there.' --model demo -o noise.wav --timeline timeline.png"
        ),
    )
    speak.add_argument("text", metavar="TEXT", help="the words to speak, or - to read them from stdin")
    g = speak.add_argument_group("voice")
    g.add_argument(
        "--voice",
        metavar="FILE",
        help="a recording (.wav/.flac/...; needs --voice-text) or NAME.voice from `tadastream encode-voice`",
    )
    g.add_argument("--voice-text", metavar="TEXT", help="transcript of the --voice recording")
    g.add_argument("--language", metavar="xx", help="language of the --voice recording (en default; de, fr, ja ...)")
    g = speak.add_argument_group("output")
    g.add_argument("-o", "--output", metavar="FILE|-", help="write .wav/.flac/.ogg, or - for stdout")
    g.add_argument(
        "--stream",
        action="store_true",
        help="emit audio as it is generated: play at once, or with -o - write each chunk to stdout",
    )
    g.add_argument(
        "--format",
        choices=STDOUT_FORMATS,
        help="stdout encoding: wav (default; streaming header) or raw (16-bit little-endian PCM, 24 kHz mono)",
    )
    g.add_argument("--timeline", metavar="PNG", help="also draw chunk timings and token durations (tadastream[plot])")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress or summary on stderr")
    _add_model_options(speak)
    _add_generation_options(speak)
    _add_common(speak)
    speak.set_defaults(handler=cmd_speak)

    enc = sub.add_parser(
        "encode-voice",
        help="encode a recording + transcript into a reusable NAME.voice",
        description=(
            "Encode a voice prompt once (codec encoder + aligner) and save it; `speak --voice NAME.voice` then "
            "starts without the encoder."
        ),
    )
    enc.add_argument("audio", metavar="FILE", help="a few seconds of clear speech (.wav, .flac, .ogg ...)")
    enc.add_argument("--text", required=True, help="exactly what is said in FILE (- to read it from stdin)")
    enc.add_argument("-o", "--output", required=True, metavar="NAME.voice", help="where to save the encoded voice")
    enc.add_argument(
        "--codec", default=DEFAULT_CODEC, metavar="ID|DIR", help="codec with encoder/ and aligner/ (%(default)s)"
    )
    enc.add_argument("--tokenizer", metavar="ID|DIR", help="Llama 3 tokenizer (default: the aligner's)")
    enc.add_argument(
        "--language", metavar="xx", help="language of the recording (en default; ar ch de es fr it ja pl pt)"
    )
    enc.add_argument("--device", metavar="DEV", help="cpu, cuda, ... (default: cuda if available, else cpu)")
    enc.add_argument("-q", "--quiet", action="store_true", help="no summary on stderr")
    _add_common(enc)
    enc.set_defaults(handler=cmd_encode_voice)

    demo = sub.add_parser(
        "demo",
        help="run the whole pipeline on the embedded tiny model (no download)",
        description=(
            "Generate with the embedded tiny model (random weights: the audio is noise-like) and report time to "
            "first audio, total time and real-time factor."
        ),
    )
    demo.add_argument("--text", default=DEMO_TEXT, help="what to 'speak' (default: a sample sentence)")
    demo.add_argument("-o", "--output", metavar="FILE", help="save the audio (.wav/.flac/.ogg)")
    demo.add_argument("--timeline", metavar="PNG", help="draw chunk timings and token durations (tadastream[plot])")
    demo.add_argument("--seed", type=int, default=0, help="random seed (%(default)s)")
    demo.add_argument("--device", metavar="DEV", help="cpu, cuda, ... (default: cpu)")
    _add_common(demo)
    demo.set_defaults(handler=cmd_demo)

    serve = sub.add_parser("serve", help="HTTP/WebSocket speech server (OpenAI-compatible; tadastream[server])")
    add_serve_arguments(serve)
    _add_common(serve)
    serve.set_defaults(handler=cmd_serve)
    return parser


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import run_server

    return run_server(args)


# ------------------------------------------------------------------------------------------------
# validation (cheap; runs before any model is loaded)


def _read_text(text: str, what: str = "text") -> str:
    if text == "-":
        if sys.stdin is None or sys.stdin.closed:
            raise UsageError(f"{what} is '-' but there is no standard input; pass the words as an argument")
        text = sys.stdin.read()
    if not text.strip():
        raise UsageError(f"{what} is empty: pass the words to speak (or - and pipe them in)")
    return text.strip()


def _check_output_file(path: str, flag: str = "-o") -> Path:
    from .audio import available_formats

    target = Path(path).expanduser()
    allowed = [e for e in FILE_EXTENSIONS if e in available_formats()]
    ext = target.suffix.lower().lstrip(".")
    if ext not in allowed:
        raise UsageError(
            f"{flag} {path}: unknown audio extension {target.suffix or '(none)'!r}; use one of "
            + ", ".join(f".{e}" for e in allowed)
            + (" (or - for stdout)" if flag == "-o" else "")
        )
    _check_folder(target, flag)
    return target


def _check_folder(target: Path, flag: str) -> None:
    if target.is_dir():
        raise UsageError(f"{flag} {target}: that is a folder; give a file name")
    if not target.parent.is_dir():
        raise UsageError(f"{flag} {target}: folder {target.parent} does not exist; create it first")
    if not os.access(target.parent, os.W_OK):
        raise UsageError(f"{flag} {target}: folder {target.parent} is not writable; choose another place")


def _check_timeline(path: str | None) -> Path | None:
    if path is None:
        return None
    target = Path(path).expanduser()
    if target.suffix.lower() != ".png":
        raise UsageError(f"--timeline {path}: the file name must end in .png")
    _check_folder(target, "--timeline")
    from .timeline import MissingMatplotlibError, require_matplotlib

    try:
        require_matplotlib()
    except MissingMatplotlibError as exc:
        raise UsageError(str(exc)) from None
    return target


def _looks_like_path(name: str) -> bool:
    """What hub.resolve_checkpoint would not treat as a hub id ('org/name')."""
    return name.startswith((".", "/", "~")) or name.count("/") != 1 or os.sep != "/" and os.sep in name


def _check_source(name: str | None, flag: str, what: str) -> None:
    """A local checkpoint path must exist; hub ids are checked when loading."""
    if name is None or name == DEMO:
        return
    local = Path(name).expanduser()
    if local.exists():
        if not local.is_dir():
            raise UsageError(f"{flag} {name}: that is a file; pass the {what} directory (with config.json)")
        return
    if _looks_like_path(name):
        hint = " or --model demo for the embedded tiny model" if flag == "--model" else ""
        raise UsageError(
            f"{flag} {name}: no such directory; pass a local {what} directory, a hub id like "
            f"{DEFAULT_MODEL if flag == '--model' else DEFAULT_CODEC}{hint}"
        )


def _pick_device(name: str | None) -> str:
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {name}: not a device name; use cpu, cuda, cuda:0, mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: MPS is not available here; use --device cpu")
    return str(device)


@dataclass
class _VoiceRequest:
    """A validated --voice: an encoded voice (loaded) or a recording (loaded) + transcript to encode."""

    encoded: Any = None
    audio: Any = None
    sample_rate: int = 0
    text: str = ""
    path: Path | None = None


def _check_voice(voice: str | None, voice_text: str | None) -> _VoiceRequest | None:
    if voice is None:
        if voice_text is not None:
            raise UsageError("--voice-text is the transcript of a --voice recording; pass --voice FILE.wav too")
        return None
    path = Path(voice).expanduser()
    if path.suffix.lower() == ".voice":
        if voice_text is not None:
            raise UsageError("--voice-text is for recordings; a .voice file already holds its transcript")
        if not path.is_file():
            raise UsageError(
                f"--voice {path}: file not found; check the path (make one with `tadastream encode-voice`)"
            )
        from .codec.encoder import EncoderOutput

        try:
            return _VoiceRequest(encoded=EncoderOutput.load(path), path=path)
        except ValueError as exc:  # VoiceFileError: not found, not a voice file
            hint = "" if "not found" in str(exc) else " (make one with `tadastream encode-voice`)"
            raise UsageError(_one_line(exc) + hint) from None
        except OSError as exc:
            raise UsageError(f"cannot read voice file {path} ({exc.strerror or exc}); check the path") from None
    return _check_recording(path, voice_text, "--voice", "--voice-text")


def _check_recording(path: Path, text: str | None, flag: str, text_flag: str) -> _VoiceRequest:
    if not path.is_file():
        raise UsageError(f"{flag} {path}: {'that is a folder' if path.is_dir() else 'file not found'}; check the path")
    if text is None:
        raise UsageError(f"{flag} {path} is a recording: pass its transcript with {text_flag} '...' (or use a .voice)")
    text = _read_text(text, text_flag)
    from .audio import AudioError, check_prompt_audio, load_audio, to_mono

    try:
        audio, rate = load_audio(path)
        audio = to_mono(audio)
        check_prompt_audio(audio, rate)
    except AudioError as exc:
        raise UsageError(_one_line(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot read {path} ({exc.strerror or exc}); check the file") from None
    return _VoiceRequest(audio=audio, sample_rate=rate, text=text, path=path)


def _check_language(language: str | None) -> None:
    if language is None:
        return
    from .codec.encoder import aligner_subfolder  # a heavy import: only when a language is given

    try:
        aligner_subfolder(language)
    except ValueError as exc:
        raise UsageError(f"--language: {_one_line(exc)}") from None


def _check_player() -> None:
    """Fail now, not after loading a model, when audio cannot be played here."""
    try:
        import sounddevice as sd
    except ImportError:
        raise UsageError(
            "playing audio needs sounddevice: pip install 'tadastream[play]', or write a file with -o out.wav "
            "(or pipe it: -o - | ffplay -nodisp -autoexit -)"
        ) from None
    except OSError as exc:  # sounddevice present, PortAudio library missing
        raise UsageError(
            f"sounddevice cannot load PortAudio ({_one_line(exc)}): install it (e.g. apt install libportaudio2), "
            "or write a file with -o out.wav"
        ) from None
    try:
        sd.query_devices(kind="output")
    except Exception as exc:  # noqa: BLE001 - PortAudioError or ValueError, depending on the version
        raise UsageError(
            f"no audio output device found ({_one_line(exc)}); write a file with -o out.wav instead"
        ) from None


# ------------------------------------------------------------------------------------------------
# audio sinks


class _FileSink:
    """Collects the chunks and saves them once, atomically, at the end."""

    def __init__(self, path: Path):
        self.path = path
        self.chunks: list[Any] = []

    def write(self, chunk) -> None:
        self.chunks.append(chunk)

    def close(self) -> None:
        from .audio import save_audio

        save_audio(self.path, _concat(self.chunks), SAMPLE_RATE)


class _StdoutSink:
    """PCM16 to stdout: chunk by chunk (flushed; streaming WAV header) or one complete file at the end."""

    def __init__(self, fmt: str, streaming: bool):
        self.fmt, self.streaming = fmt, streaming
        self.out = sys.stdout.buffer
        self.chunks: list[Any] = []
        self.started = False

    def write(self, chunk) -> None:
        from .audio import float_to_pcm16, wav_header

        if not self.streaming:
            self.chunks.append(chunk)
            return
        data = float_to_pcm16(chunk)
        if not self.started and self.fmt == "wav":
            data = wav_header(SAMPLE_RATE, 1, None) + data
        self.started = True
        self.out.write(data)
        self.out.flush()

    def close(self) -> None:
        from .audio import encode_audio, wav_header

        if self.streaming:
            if not self.started and self.fmt == "wav":
                self.out.write(wav_header(SAMPLE_RATE, 1, None))  # no audio: still a valid (empty) stream
        else:
            self.out.write(encode_audio(_concat(self.chunks), SAMPLE_RATE, "pcm" if self.fmt == "raw" else "wav"))
        self.out.flush()


class _PlayerSink:
    """The sound card via sounddevice: a callback drains a queue that generation fills.

    Generation and playback overlap (writes never block); if the queue runs dry the callback plays
    silence until more arrives. Without ``streaming`` playback starts once everything is generated.
    """

    def __init__(self, streaming: bool):
        import sounddevice as sd

        self._sd = sd
        self.streaming = streaming
        self._queue: deque = deque()
        self._lock = threading.Lock()
        self._finished = threading.Event()
        self._no_more = False
        self._queued = 0
        self._stream = sd.OutputStream(
            samplerate=SAMPLE_RATE,
            channels=1,
            dtype="float32",
            callback=self._callback,
            finished_callback=self._finished.set,
        )
        self._started = False

    def _callback(self, outdata, frames, time_info, status) -> None:
        filled = 0
        with self._lock:
            while filled < frames and self._queue:
                head = self._queue[0]
                take = min(len(head), frames - filled)
                outdata[filled : filled + take, 0] = head[:take]
                filled += take
                if take == len(head):
                    self._queue.popleft()
                else:
                    self._queue[0] = head[take:]
            done = self._no_more and not self._queue
        outdata[filled:] = 0
        if done:
            raise self._sd.CallbackStop

    def write(self, chunk) -> None:
        samples = chunk.detach().to("cpu").float().numpy()
        with self._lock:
            self._queue.append(samples)
            self._queued += len(samples)
        if self.streaming and not self._started:
            self._start()

    def _start(self) -> None:
        self._started = True
        self._stream.start()

    def close(self) -> None:
        with self._lock:
            self._no_more = True
        if not self._started:
            self._start()
        self._finished.wait(timeout=self._queued / SAMPLE_RATE + 5.0)
        self._stream.close()

    def abort(self) -> None:
        try:
            self._stream.abort()
            self._stream.close()
        except Exception:  # noqa: BLE001 - best effort while already failing
            pass


def _concat(chunks: list[Any]):
    import torch

    return torch.cat(chunks) if chunks else torch.zeros(0)


# ------------------------------------------------------------------------------------------------
# progress


class _Progress:
    """A live status line on stderr (only on a terminal), and a final summary unless quiet."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.live = enabled and sys.stderr.isatty()
        self.tokens = 0
        self.total_tokens = 0
        self.samples = 0
        self.first_audio: float | None = None
        self.start = time.perf_counter()
        self._drawn = 0.0

    def note(self, message: str) -> None:
        if self.enabled:
            self._clear()
            _say(message)

    def token(self) -> None:
        self.tokens += 1
        self._draw()

    def chunk(self, samples: int) -> None:
        if self.first_audio is None:
            self.first_audio = time.perf_counter() - self.start
        self.samples += samples
        self._draw()

    def _draw(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not self.live or (not force and now - self._drawn < 0.1):
            return
        self._drawn = now
        total = f"/{self.total_tokens}" if self.tokens <= self.total_tokens else ""
        first = f"first audio after {self.first_audio:.2f} s" if self.first_audio is not None else "waiting for audio"
        line = f"tokens {self.tokens}{total} settled | {self.samples / SAMPLE_RATE:.2f} s of audio | {first}"
        sys.stderr.write("\r" + line[:120] + "\x1b[K")
        sys.stderr.flush()

    def _clear(self) -> None:
        if self.live:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


# ------------------------------------------------------------------------------------------------
# running


def _load_model(args: argparse.Namespace, device: str, dtype, progress: _Progress):
    if args.model == DEMO:
        from .demo import build_demo_model

        return build_demo_model().to(device=device, dtype=dtype).optimize_for_inference(args.quantize)
    from .hub import CheckpointError
    from .model import TadaForCausalLM

    progress.note(f"loading {args.model} ...")
    try:
        return TadaForCausalLM.from_pretrained(
            args.model,
            codec=args.codec or DEFAULT_CODEC,
            tokenizer=args.tokenizer,
            torch_dtype=dtype,
            device=device,
            quantize=args.quantize,
        )
    except CheckpointError as exc:
        raise CliError(f"{_one_line(exc)} (to try the pipeline without a download: --model demo)") from None


def _encode_recording(voice: _VoiceRequest, codec: str, language: str | None, tokenizer, device: str, progress):
    from .codec.encoder import Encoder

    progress.note(f"encoding the voice {voice.path} with {codec} ...")
    encoder = Encoder.from_pretrained(codec, subfolder="encoder", language=language, tokenizer=tokenizer)
    encoder.to(device)
    return encoder(voice.audio, text=[voice.text], sample_rate=voice.sample_rate)


def _options(args: argparse.Namespace):
    from .generation import GenerationInputError, InferenceOptions

    try:
        return InferenceOptions(
            text_temperature=args.temperature,
            acoustic_cfg_scale=args.cfg_scale,
            num_flow_matching_steps=args.flow_steps,
            noise_temperature=args.noise_temperature,
            speed_up_factor=args.speed,
        ).validate()
    except GenerationInputError as exc:
        raise UsageError(_one_line(exc)) from None


def _stream(model, prompt, text: str, progress: _Progress, **kwargs):
    """An AudioStream that also reports each settled token of the new text to ``progress``."""
    from .stream import AudioStream

    model.require_decoder()
    stream = AudioStream(model, prompt, text, **kwargs)
    stream.on_token = lambda _step: progress.token()
    progress.total_tokens = stream.tokens_total or 0
    return stream


def _generate(model, prompt, text: str, options, sink, progress: _Progress, *, transition_steps=5, normalize=True):
    """Stream ``text`` into ``sink``; returns (result, audio seconds)."""
    stream = _stream(
        model,
        prompt,
        text,
        progress,
        inference_options=options,
        num_transition_steps=transition_steps,
        normalize_text=normalize,
    )
    progress.start = stream.started_at
    with stream:
        for chunk, _rate in stream:
            sink.write(chunk)
            progress.chunk(int(chunk.numel()))
    progress._clear()
    if stream.result is None:
        raise CliError("generation stopped before it finished; rerun with --debug to see why")
    return stream.result, sum(stream.result.chunk_samples or [0]) / SAMPLE_RATE


def _timings(result, seconds: float) -> tuple[str, str, str]:
    wall = result.total_time or 0.0
    first = f"{result.time_to_first_audio:.3f} s" if result.time_to_first_audio is not None else "n/a (no audio)"
    speed = f"{seconds / wall:.2f}x real time" if wall > 0 else "n/a"
    rtf = f"{wall / seconds:.3f}" if seconds > 0 else "n/a"
    return first, speed, rtf


def cmd_speak(args: argparse.Namespace) -> int:
    """``tadastream speak``: validate everything, then load, generate and deliver."""
    text = _read_text(args.text)
    to_stdout = args.output == "-"
    output = None if args.output is None or to_stdout else _check_output_file(args.output)
    if args.format is not None and not to_stdout:
        raise UsageError("--format is for -o - (stdout); a file's format comes from its extension (.wav, .flac, .ogg)")
    if to_stdout and sys.stdout.isatty():
        raise UsageError(
            "-o - would write binary audio to the terminal: pipe it (| ffplay -nodisp -autoexit -) or use -o out.wav"
        )
    if args.output is None:
        _check_player()
    timeline = _check_timeline(args.timeline)
    demo = args.model == DEMO
    if demo and args.tokenizer is not None:
        raise UsageError("--tokenizer does not apply to --model demo (it has its own tokenizer)")
    _check_source(args.model, "--model", "TADA checkpoint")
    _check_source(args.codec, "--codec", "codec")
    _check_source(args.tokenizer, "--tokenizer", "tokenizer")
    _check_language(args.language)
    voice = _check_voice(args.voice, args.voice_text)
    if voice is None and not demo:
        raise UsageError(
            f"{args.model} has no built-in voice: pass --voice FILE.wav --voice-text 'its transcript', "
            "or --voice NAME.voice from `tadastream encode-voice` (or use --model demo)"
        )
    if voice is not None and voice.audio is not None and demo and args.codec is None:
        raise UsageError(
            "the demo model has no codec encoder to encode a recording: use --voice NAME.voice, or --codec DIR "
            "with an encoder built for it"
        )
    options = _options(args)
    device = _pick_device(args.device)
    from .hub import run_dtype

    dtype = run_dtype(args.dtype, device, args.quantize)
    if args.quantize and not str(device).startswith("cpu"):
        raise UsageError(f"--quantize {args.quantize} speeds up CPU only: drop it with --device {device}")
    if args.quantize and args.dtype not in ("auto", "bfloat16"):
        raise UsageError(f"--quantize {args.quantize} runs in bfloat16: drop --dtype {args.dtype}")

    progress = _Progress(enabled=not to_stdout and not args.quiet)
    if to_stdout:
        sink: Any = _StdoutSink(args.format or "wav", streaming=args.stream)
    elif output is not None:
        sink = _FileSink(output)
    else:
        sink = None  # the player opens once the model is ready

    import torch

    if args.seed is not None:
        torch.manual_seed(args.seed)
    model = _load_model(args, device, dtype, progress)
    if voice is None:
        from .demo import demo_voice

        prompt = demo_voice(model)
    elif voice.encoded is not None:
        prompt = voice.encoded
    else:
        # The LLM's own tokenizer: the prompt's tokens must be the ones the LLM reads.
        codec = args.codec or DEFAULT_CODEC
        prompt = _encode_recording(voice, codec, args.language, model.tokenizer, device, progress)
    if args.seed is not None:
        torch.manual_seed(args.seed)  # the same seed gives the same audio however the voice was obtained
    if sink is None:
        try:
            sink = _PlayerSink(streaming=args.stream)
        except Exception as exc:  # noqa: BLE001 - PortAudioError is not a ValueError/OSError
            raise CliError(f"cannot open the audio output ({_one_line(exc)}); write a file with -o out.wav") from None
    try:
        result, seconds = _generate(
            model,
            prompt,
            text,
            options,
            sink,
            progress,
            transition_steps=args.transition_steps,
            normalize=not args.no_normalize,
        )
        sink.close()
    except BaseException:
        if isinstance(sink, _PlayerSink):
            sink.abort()
        raise
    if timeline is not None:
        from .timeline import plot_timeline

        plot_timeline(result, timeline, SAMPLE_RATE)
    first, speed, rtf = _timings(result, seconds)
    where = f"wrote {output}" if output is not None else ("stdout" if to_stdout else "played")
    progress.note(
        f"{where}: {seconds:.2f} s of audio in {result.total_time:.2f} s ({speed}); first audio after {first}"
        + (f"; timeline {timeline}" if timeline is not None else "")
    )
    return 0


def cmd_encode_voice(args: argparse.Namespace) -> int:
    """``tadastream encode-voice``: recording + transcript -> NAME.voice (atomic write)."""
    target = Path(args.output).expanduser()
    if target.suffix.lower() != ".voice":
        raise UsageError(f"-o {args.output}: name the encoded voice NAME.voice (e.g. -o {target.stem or 'me'}.voice)")
    _check_folder(target, "-o")
    _check_source(args.codec, "--codec", "codec")
    _check_source(args.tokenizer, "--tokenizer", "tokenizer")
    _check_language(args.language)
    voice = _check_recording(Path(args.audio).expanduser(), args.text, "FILE", "--text")
    device = _pick_device(args.device)

    progress = _Progress(enabled=not args.quiet)
    from .hub import CheckpointError

    try:
        encoded = _encode_recording(voice, args.codec, args.language, args.tokenizer, device, progress)
    except CheckpointError as exc:
        raise CliError(_one_line(exc)) from None
    encoded.save(target)
    tokens = int(encoded.text_tokens_len[0]) if encoded.text_tokens_len is not None else encoded.token_values.shape[1]
    progress.note(
        f"wrote {target}: {voice.audio.numel() / voice.sample_rate:.2f} s of speech, {tokens} tokens aligned; "
        f"use it with: tadastream speak 'Hello.' --voice {target}"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``tadastream demo``: the embedded tiny model end to end, with timings on stdout."""
    text = _read_text(args.text, "--text")
    output = _check_output_file(args.output) if args.output is not None else None
    timeline = _check_timeline(args.timeline)
    device = _pick_device(args.device or "cpu")

    import torch

    from .demo import build_demo_model, demo_voice
    from .generation import InferenceOptions

    print(DEMO_NOTICE, flush=True)
    model = build_demo_model().to(device)
    prompt = demo_voice(model)
    torch.manual_seed(args.seed)
    sink = _FileSink(output) if output is not None else _NullSink()
    result, seconds = _generate(model, prompt, text, InferenceOptions(), sink, _Progress(enabled=False))
    sink.close()
    first, speed, rtf = _timings(result, seconds)
    print(f"text: {text!r}")
    print(f"audio: {seconds:.2f} s at {SAMPLE_RATE} Hz in {len(result.chunk_samples or [])} chunks")
    print(f"time to first audio: {first}")
    print(f"total time: {result.total_time:.3f} s")
    print(
        f"speed: {speed} (audio seconds / wall seconds); real-time factor {rtf} "
        "(wall seconds / audio seconds, below 1 keeps ahead of playback)"
    )
    if output is not None:
        print(f"wrote {output}")
    if timeline is not None:
        from .timeline import plot_timeline

        plot_timeline(result, timeline, SAMPLE_RATE)
        print(f"wrote {timeline}")
    if output is None and timeline is None:
        print("pass -o demo.wav to keep the audio, --timeline timeline.png to see the chunk timings")
    return 0


class _NullSink:
    def write(self, chunk) -> None:
        pass

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------------------
# entry point


def _quiet_stdout() -> None:
    """After a closed pipe: point stdout at devnull so the interpreter's final flush stays silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 failed while running, 2 bad usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return 2
    debug = args.debug
    try:
        return args.handler(args)
    except UsageError as exc:
        if debug:
            raise
        _say(f"error: {_one_line(exc)}")
        return 2
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except BrokenPipeError:
        _quiet_stdout()  # the reader (a player, head) went away: nothing more to say
        return 1
    except (CliError, ValueError, OSError) as exc:
        # tadastream's user-facing errors (AudioError, CheckpointError, GenerationInputError,
        # VoiceFileError, TranscriptError) are ValueErrors whose message says what to do.
        if debug:
            raise
        _say(f"error: {_one_line(exc)}")
        return 1
    except Exception as exc:
        if debug:
            raise
        _say(
            f"error: unexpected {type(exc).__name__}: {_one_line(exc)} "
            "(a bug? rerun with --debug for the traceback and report it)"
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
