"""Child processes that a test stops with Ctrl-C (SIGINT)."""

from __future__ import annotations

import signal


def interruptible() -> None:
    """``preexec_fn`` for a child that a test sends SIGINT. A shell without job control starts a
    background job (``pytest &`` in a script) with SIGINT ignored, children inherit that, and
    Python then installs no KeyboardInterrupt handler: the child would never see the Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
