"""Option sets shared by commands that build on each other (``serve``, ``wyoming``, Ray's deployment).

Each command declares its options with one ``add_*_arguments(parser)`` function, which may add
another command's options first; :func:`adder` lets it skip the flags the parser already has.
:func:`option_namespace` turns such a function into the options a library caller passes as
keywords, with the same defaults and names as the command line.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

__all__ = ["OptionError", "adder", "option_namespace"]


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
