"""Option sets shared by commands that build on each other (``serve``, ``wyoming``, Ray's deployment).

Each command declares its options with one ``add_*_arguments(parser)`` function, which may add
another command's options first; :func:`adder` lets it skip the flags the parser already has.
:func:`option_namespace` turns such a function into the options a library caller passes as
keywords, with the same defaults and names as the command line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any

from .config import DEFAULT_CODEC, DEFAULT_MODEL, QUANTIZE_ACTIVATIONS
from .limits import ADMISSION_POLICIES, BOOST_POLICIES, REALTIME_MARGIN

__all__ = [
    "OptionError",
    "add_admission_arguments",
    "add_compile_arguments",
    "add_model_arguments",
    "add_process_arguments",
    "adder",
    "configure_logging",
    "option_namespace",
]


class OptionError(ValueError):
    """An option that cannot work, found before anything was loaded or started; the message names the flag."""


def adder(parser: argparse.ArgumentParser) -> Callable[..., None]:
    """``parser.add_argument`` that keeps an option the parser already has (a shared ``--model``)."""

    def add(*flags: str, **kw: Any) -> None:
        try:
            parser.add_argument(*flags, **kw)
        except argparse.ArgumentError:
            pass

    return add


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model a server loads (:func:`tadastream.loading.load_model`'s arguments)."""
    add = adder(parser)
    add("--model", default=DEFAULT_MODEL, help="hub id, checkpoint folder, or 'demo' (tiny built-in model)")
    add("--codec", default=DEFAULT_CODEC, help="codec hub id or folder (its decoder/ is used)")
    add("--tokenizer", default=None, help="tokenizer hub id or folder (default: from the checkpoint)")
    add("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    add(
        "--dtype",
        default="auto",
        help="float32, bfloat16, float16 or auto (bfloat16 on cuda or a CPU with native bf16, else float32)",
    )
    add(
        "--quantize",
        default=None,
        choices=list(QUANTIZE_ACTIVATIONS),
        help="int8: int8 weights, bf16 activations; w8a8: int8 weights and activations, fp32 (CPU; fastest on "
        "CPUs without native bf16)",
    )
    add_compile_arguments(parser)


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_compile_arguments(parser: argparse.ArgumentParser) -> None:
    """Compiled steps and warm-up (:meth:`tadastream.model.TadaForCausalLM.compile`)."""
    add = adder(parser)
    add(
        "--compile",
        action="store_true",
        help="run the LLM step and the flow solve compiled (torch.compile; CUDA graphs on cuda) over a "
        "preallocated cache: for GPUs; compiling takes minutes on a small CPU",
    )
    add("--warmup", action="store_true", help="build the compiled graphs (or run one step) before serving")
    add(
        "--max-positions",
        type=positive_int,
        default=None,
        help="positions each stream's cache holds with --compile (default 4096; a longer text fails clearly)",
    )


def add_admission_arguments(parser: argparse.ArgumentParser, refused: str) -> None:
    """How a server shares its engine among requests: admission (:class:`tadastream.service.speech.Admission`)
    and the first-audio boost; the same flags, names and defaults for ``serve`` and ``wyoming``; ``refused``
    says what a request past ``--queue`` gets ("429", "an error event"). Checked by
    :func:`tadastream.limits.check_admission`."""
    add = adder(parser)
    add(
        "--admission",
        choices=ADMISSION_POLICIES,
        default="slots",
        help="slots: start a request whenever one of --max-streams is free; realtime: also only while every "
        "stream is predicted (from the engine's measured tick times) to stay ahead of playback, else it "
        f"queues, and past --queue gets {refused} (default slots)",
    )
    add(
        "--realtime-margin",
        type=float,
        default=REALTIME_MARGIN,
        help=f"with --admission realtime: how much faster than playback each stream must be predicted to "
        f"generate (default {REALTIME_MARGIN})",
    )
    add(
        "--first-audio-boost",
        choices=BOOST_POLICIES,
        default="guarded",
        help="a request joining running streams gets a second step per engine tick until its first audio "
        "frame: guarded, while every stream being heard stays ahead of playback; always; off (default guarded)",
    )


def add_process_arguments(parser: argparse.ArgumentParser) -> None:
    """What a long-running server process takes: torch threads and the log level."""
    add = adder(parser)
    add("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    add("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def configure_logging(level_name: str) -> None:
    """tadastream's loggers at ``level_name``, to stderr unless the process already set up logging
    (stdout may be a protocol's: Wyoming over stdio)."""
    level = getattr(logging, level_name.upper())
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("tadastream").setLevel(level)


def option_namespace(
    add_arguments: Callable[[argparse.ArgumentParser], None],
    args: argparse.Namespace | None = None,
    kwargs: dict[str, Any] | None = None,
) -> argparse.Namespace:
    """Every option ``add_arguments`` declares: its defaults, then ``args`` (other attributes ignored),
    then ``kwargs`` (``max_streams=8`` or ``**{"max-streams": 8}``); an unknown keyword is a TypeError."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    merged = vars(parser.parse_args([]))
    if args is not None:
        merged.update({k: v for k, v in vars(args).items() if k in merged})
    for key, value in (kwargs or {}).items():
        key = key.replace("-", "_")
        if key not in merged:
            raise TypeError(f"unexpected option {key!r}")
        merged[key] = value
    return argparse.Namespace(**merged)
