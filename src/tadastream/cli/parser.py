"""The command-line grammar: every flag, its help and its cheap type check.

Nothing here imports torch, so ``tadastream --help`` and argument typos answer at once.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NoReturn

from .. import __version__
from ..config import DEFAULT_CODEC, DEFAULT_MODEL, QUANTIZE_ACTIVATIONS
from ..deploy.ray import add_ray_arguments
from ..integrations.wyoming import add_wyoming_arguments
from ..limits import FLOAT_RANGES, MAX_SEED, OPTION_LIMITS, SPEED_RANGE
from ..optionsets import add_compile_arguments
from ..server import add_serve_arguments
from .book import CHAPTER_FORMATS
from .checks import FILE_EXTENSIONS
from .commands import STDOUT_FORMATS, cmd_demo, cmd_encode_voice, cmd_ray, cmd_serve, cmd_speak, cmd_wyoming
from .errors import one_line

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEMO_TEXT = "Streaming speech starts playing while the rest of the sentence is still being generated."
# argparse defaults = InferenceOptions defaults (tests check they agree); kept here for a torch-free --help.
OPTION_DEFAULTS = {
    "temperature": 0.6,
    "cfg_scale": 1.6,
    "flow_steps": 10,
    "noise_temperature": 0.9,
    "transition_steps": 5,
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``error: <what>; see `<prog> --help```, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {one_line(message)}; see `{self.prog} --help`\n")

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        """As argparse, but an unknown option points to the help of the subcommand it was given to."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = getattr(parsed, "command", None)
            prog = f"{self.prog} {command}" if command else self.prog
            self.exit(2, f"error: unrecognized arguments: {' '.join(extras)}; see `{prog} --help`\n")
        return parsed


def _number(kind: type, low: float, high: float | None = None, *, low_ok: bool = True) -> Callable[[str], float]:
    """An argparse ``type`` for ``kind`` from ``low`` (excluded unless ``low_ok``) to ``high``: a value
    outside (NaN, infinity, a seed too large for torch) is refused with the range it must be in."""
    show = str if kind is int else "{:g}".format  # a seed's bound in full, not as 9.22337e+18
    noun = "a whole number" if kind is int else "a number"
    if high is None:
        what = f"{noun} {'>=' if low_ok else '>'} {show(low)}"
    elif low_ok:
        what = f"{noun} from {show(low)} to {show(high)}"
    else:
        what = f"{noun} above {show(low)} and at most {show(high)}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not (low <= value if low_ok else low < value) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")  # NaN fails the comparisons too
        return value

    return parse


def _float_range(field: str, low_ok: bool = True) -> Callable[[str], float]:
    """The range InferenceOptions (and so the server) accepts for ``field``."""
    return _number(float, *FLOAT_RANGES[field], low_ok=low_ok)


_seed = _number(int, 0, MAX_SEED)


def _first_chunk_ms(text: str) -> float | None:
    """``--min-first-chunk-ms``: 'adaptive' (None) or milliseconds within the accepted range."""
    from ..limits import MAX_FIRST_CHUNK_MS

    if text.strip().lower() == "adaptive":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= MAX_FIRST_CHUNK_MS:
        raise argparse.ArgumentTypeError(
            f"expected 'adaptive' or milliseconds from 0 to {MAX_FIRST_CHUNK_MS:g}, got {text!r}"
        )
    return value


def _add_first_chunk(g) -> None:
    g.add_argument(
        "--min-first-chunk-ms",
        type=_first_chunk_ms,
        default=None,
        metavar="MS|adaptive",
        help="audio the first chunk holds: adaptive (default) waits until playback that starts on it will not "
        "pause; 0 sends the first samples at once (a few ms, then a wait); or a number of milliseconds",
    )


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show the full traceback of any error")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        metavar="ID|DIR|demo",
        help=f"TADA checkpoint: hub id or local directory (default {DEFAULT_MODEL}, a download of a few GB), "
        "or 'demo' for the embedded tiny model (no download; noise-like audio)",
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
        help="weights precision (default auto: bfloat16 on cuda or a CPU with native bf16 (avx512_bf16/AMX), "
        "else float32; the choice is printed)",
    )
    g.add_argument(
        "--quantize",
        choices=tuple(QUANTIZE_ACTIVATIONS),
        help="int8 weights for the LLM and flow head (CPU): int8 with bfloat16 activations, or w8a8 with int8 "
        "activations (float32 in and out; several times faster than float32 where bf16 is not native); "
        "a small deviation",
    )
    add_compile_arguments(g)


def _add_generation_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation")
    g.add_argument(
        "--seed",
        type=_seed,
        metavar="N",
        help="random seed (default: a random one, printed in the summary so the result can be reproduced)",
    )
    # The numeric knobs: flag, parser, metavar, help; their defaults (shown in --help) come from OPTION_DEFAULTS.
    # Their ranges are the server's (tadastream.limits), so the command line refuses what a request would.
    knobs = (
        ("--temperature", _float_range("text_temperature", low_ok=False), "T", "text sampling"),
        ("--cfg-scale", _float_range("acoustic_cfg_scale"), "S", "acoustic guidance"),
        ("--flow-steps", _number(int, 1, OPTION_LIMITS["num_flow_matching_steps"]), "N", "flow-matching steps"),
        ("--noise-temperature", _float_range("noise_temperature"), "T", "acoustic noise scale"),
        ("--speed", _number(float, *SPEED_RANGE), "FACTOR", "speak faster (>1) or slower (<1); two passes"),
        ("--transition-steps", _number(int, 0), "N", "prompt tokens dropped at the seam between prompt and new text"),
    )
    for flag, parse, metavar, text in knobs:
        dest = flag[2:].replace("-", "_")
        shown = " (%(default)s)" if dest in OPTION_DEFAULTS else ""
        g.add_argument(flag, type=parse, default=OPTION_DEFAULTS.get(dest), metavar=metavar, help=text + shown)
    g.add_argument(
        "--no-normalize",
        action="store_true",
        help="speak the text as written (skip punctuation and casing normalisation)",
    )


def _add_speak(sub) -> None:
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
            "  tadastream speak -f chapter.txt --voice me.voice -o chapter.flac         # any length\n"
            "  tadastream speak 'Hello there.' --model demo -o noise.wav --timeline timeline.png\n"
            "  tadastream speak -f talk.txt --voice me.voice -o talk.mp3 --subtitles talk.vtt --timestamps talk.json"
        ),
    )
    speak.add_argument("text", metavar="TEXT", nargs="?", help="the words to speak, or - to read them from stdin")
    speak.add_argument(
        "-f",
        "--file",
        metavar="FILE",
        help="read the words from a UTF-8 text file instead; any length (long texts are spoken in segments)",
    )
    speak.add_argument(
        "--long-form",
        action="store_true",
        help="speak in segments of a few sentences even when the text would fit one generation "
        "(narration: memory and pace stay the same over a whole book); texts too long for one are always split",
    )
    g = speak.add_argument_group("voice")
    g.add_argument(
        "--voice",
        metavar="FILE",
        help="a recording (.wav/.flac/...; needs --voice-text) or NAME.voice from `tadastream encode-voice`",
    )
    g.add_argument("--voice-text", metavar="TEXT", help="transcript of the --voice recording")
    g.add_argument(
        "--language", metavar="xx", help="language of the --voice recording (en default; ar zh de es fr it ja pl pt)"
    )
    g = speak.add_argument_group("output")
    g.add_argument(
        "-o",
        "--output",
        metavar="FILE|-",
        help="write a file (" + ", ".join(f".{e}" for e in FILE_EXTENSIONS) + " where this soundfile supports it), "
        "or - for stdout; with -f: also an audiobook with chapters (.m4b, .m4a), a FOLDER/ of chapter files, "
        "or a read-along EPUB (.epub, from an EPUB)",
    )
    g.add_argument(
        "--stream",
        action="store_true",
        help="emit audio as it is generated: play at once, or with -o - write each chunk to stdout",
    )
    g.add_argument(
        "--format",
        choices=tuple(dict.fromkeys((*STDOUT_FORMATS, *CHAPTER_FORMATS))),
        help="stdout encoding: wav (default; streaming header) or raw (16-bit little-endian PCM, 24 kHz mono); "
        "with -o FOLDER/, the chapter files' format (m4a default)",
    )
    _add_first_chunk(g)
    g.add_argument("--timeline", metavar="PNG", help="also draw chunk timings and token durations (tadastream[plot])")
    g.add_argument(
        "--subtitles",
        metavar="FILE",
        help="also write subtitles timed word by word from the model's durations: .srt or .vtt "
        "(WebVTT with each word's start, for karaoke highlighting)",
    )
    g.add_argument(
        "--timestamps",
        metavar="JSON",
        help="also write every word's and character's start and end (seconds) and place in the text, as .json",
    )
    g.add_argument("-q", "--quiet", action="store_true", help="no progress or summary on stderr")
    g = speak.add_argument_group("books (-f book.epub, .md, .html or .txt)")
    g.add_argument("--chapters", metavar="RANGE", help="speak only these chapters: 3-7, 2, 1,4,6-, -5")
    g.add_argument(
        "--list-chapters", action="store_true", help="print the chapters, their lengths and audio time, and stop"
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="keep the narration beside -o until the book is done; after an interruption, the same command "
        "with --resume goes on where it stopped (same audio as an uninterrupted run)",
    )
    g.add_argument(
        "--parallel",
        type=_number(int, 1, 64),
        metavar="N",
        help="segments generated at once on one engine (default 4); the audio is the same for any N",
    )
    _add_model_options(speak)
    _add_generation_options(speak)
    _add_common(speak)
    speak.set_defaults(handler=cmd_speak)


def _add_encode_voice(sub) -> None:
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
        "--codec",
        default=DEFAULT_CODEC,
        metavar="ID|DIR|demo",
        help="codec with encoder/ and aligner/ (%(default)s), or 'demo': the embedded tiny encoder for "
        "--model demo (no download; noise-like voices)",
    )
    enc.add_argument("--tokenizer", metavar="ID|DIR", help="Llama 3 tokenizer (default: the aligner's)")
    enc.add_argument(
        "--language",
        metavar="xx",
        help="language of the recording, aligned with that language's aligner and recorded in the voice"
        " (en default; ar zh de es fr it ja pl pt)",
    )
    enc.add_argument("--device", metavar="DEV", help="cpu, cuda, ... (default: cuda if available, else cpu)")
    enc.add_argument("-q", "--quiet", action="store_true", help="no summary on stderr")
    _add_common(enc)
    enc.set_defaults(handler=cmd_encode_voice)


def _add_demo(sub) -> None:
    demo = sub.add_parser(
        "demo",
        help="run the whole pipeline on the embedded tiny model (no download)",
        description=(
            "Generate with the embedded tiny model (random weights: the audio is noise-like) and report time to "
            "first audio, total time and real-time factor."
        ),
    )
    demo.add_argument("--text", default=DEMO_TEXT, help="what to 'speak' (default: a sample sentence)")
    demo.add_argument(
        "-o", "--output", metavar="FILE", help="save the audio (" + ", ".join(f".{e}" for e in FILE_EXTENSIONS) + ")"
    )
    demo.add_argument("--timeline", metavar="PNG", help="draw chunk timings and token durations (tadastream[plot])")
    _add_first_chunk(demo)
    demo.add_argument("--seed", type=_seed, default=0, help="random seed (%(default)s)")
    demo.add_argument("--device", metavar="DEV", help="cpu, cuda, ... (default: cpu)")
    demo.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    _add_common(demo)
    demo.set_defaults(handler=cmd_demo)


def _add_serve(sub) -> None:
    serve = sub.add_parser("serve", help="HTTP/WebSocket speech server (OpenAI-compatible; tadastream[server])")
    add_serve_arguments(serve)
    _add_common(serve)
    serve.set_defaults(handler=cmd_serve)


def _add_wyoming(sub) -> None:
    wyoming = sub.add_parser(
        "wyoming",
        help="Wyoming protocol TTS server for Home Assistant (tadastream[wyoming])",
        description="Serve the model over the Wyoming protocol (as wyoming-piper does): add it in Home Assistant "
        "with the Wyoming integration, host and port of --uri.",
    )
    add_wyoming_arguments(wyoming)
    _add_common(wyoming)
    wyoming.set_defaults(handler=cmd_wyoming)


def _add_ray(sub) -> None:
    ray = sub.add_parser(
        "ray",
        help="the server as a Ray Serve deployment: replicas, autoscaling, one cluster (tadastream[ray])",
        description="Serve the same app as `tadastream serve` from Ray Serve replicas, each holding one model and "
        "one batched engine. Here --host/--port are where Ray's proxy listens and --queue is how many requests "
        "wait in it when every replica is full (more get 429 with Retry-After).",
    )
    add_ray_arguments(ray)
    _add_common(ray)
    ray.set_defaults(handler=cmd_ray)


def build_parser() -> argparse.ArgumentParser:
    """The full command-line grammar (no heavy imports: ``--help`` is instant)."""
    parser = _Parser(
        prog="tadastream",
        description="TADA text-to-speech with true streaming: audio starts while the text is still being spoken.",
        epilog="Try it without a download: tadastream demo -o demo.wav",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_speak(sub)
    _add_encode_voice(sub)
    _add_demo(sub)
    _add_serve(sub)
    _add_ray(sub)
    _add_wyoming(sub)
    return parser
