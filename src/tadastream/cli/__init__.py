"""The ``tadastream`` command: ``speak``, ``encode-voice``, ``demo``, ``serve``, ``ray`` and ``wyoming``.

Every argument is checked before a model is loaded (loading takes seconds to minutes), so a typo
costs nothing: numbers have the server's ranges (:mod:`tadastream.limits`), and each file to write
is tried in its folder. User errors end the program with one ``error: ...`` line on stderr that
says how to fix it: exit status 2 when the command line is wrong and nothing ran, 1 when something
failed while running. Unexpected exceptions are bugs: a one-line summary, or the traceback with ``--debug``.

Audio on stdout (``-o -``) is the only thing written there, so it can be piped to a player; all
progress and reports go to stderr (``demo`` reports on stdout, it writes no audio there).

Layout: :mod:`.parser` (the grammar), :mod:`.checks` (validation before loading),
:mod:`.commands` (the handlers), :mod:`.sinks` (file, stdout, sound card), :mod:`.progress`
(the status line), :mod:`.errors` (the two error kinds, and Ctrl-C with what it kept). Model
loading is :mod:`tadastream.loading`.
"""

from __future__ import annotations

import os
import sys

from .errors import CliError, UsageError, one_line, say
from .parser import OPTION_DEFAULTS, build_parser

__all__ = ["OPTION_DEFAULTS", "CliError", "UsageError", "build_parser", "main"]


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
        say(f"error: {one_line(exc)}")
        return 2
    except KeyboardInterrupt as exc:
        say(one_line(exc) or "interrupted")  # an Interrupted says what was kept, in one line
        return 130
    except BrokenPipeError:
        _quiet_stdout()  # the reader (a player, head) went away: nothing more to say
        return 1
    except (CliError, ValueError, OSError) as exc:
        # tadastream's user-facing errors (AudioError, CheckpointError, GenerationInputError,
        # VoiceFileError, TranscriptError) are ValueErrors whose message says what to do.
        if debug:
            raise
        say(f"error: {one_line(exc)}")
        return 1
    except Exception as exc:
        if debug:
            raise
        say(
            f"error: unexpected {type(exc).__name__}: {one_line(exc)} "
            "(a bug? rerun with --debug for the traceback and report it)"
        )
        return 1
