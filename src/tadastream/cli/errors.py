"""The command line's two kinds of failure, and the one-line form every message reaches the user in."""

from __future__ import annotations

import sys


class UsageError(Exception):
    """The command line cannot work as given; nothing was run (exit status 2)."""


class CliError(Exception):
    """Something failed while running (exit status 1); the message says what to do."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with the one line that says what was kept (exit status 130)."""


def one_line(message: object) -> str:
    """``message`` with its whitespace collapsed: every report is a single stderr line."""
    return " ".join(str(message).split())


def say(message: str) -> None:
    """Report on stderr (stdout may be carrying the audio)."""
    print(message, file=sys.stderr, flush=True)
