"""Server limits, in a module of their own so every part of the server can name the type without importing the app."""

from __future__ import annotations

import dataclasses

from ..limits import REALTIME_MARGIN, check_admission


@dataclasses.dataclass
class ServerSettings:
    """Limits and switches of one server; ``tadastream serve`` options map onto these fields."""

    model_id: str = "demo"
    max_streams: int = 4
    queue: int = 16
    queue_timeout: float = 30.0
    admission: str = "slots"  # or "realtime": also while every stream is predicted to stay real time
    realtime_margin: float = REALTIME_MARGIN
    first_audio_boost: str = "guarded"  # when a joining stream gets a second step per tick (BOOST_POLICIES)
    api_key: str | None = None
    max_input_chars: int = 4096
    max_body_bytes: int = 256 * 1024
    max_voice_bytes: int = 16 * 1024 * 1024
    max_voice_seconds: float = 60.0
    voices_dir: str | None = None
    ws_idle_timeout: float = 60.0  # seconds a WebSocket may go without a word (whitespace, queue waits do not count)
    send_timeout: float = 30.0  # seconds one write may wait for a client that stopped reading
    max_session_seconds: float = 1800.0  # longest a request or WebSocket may hold a stream slot; 0 = no cap
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API ("*" for any)
    bind_host: str = "127.0.0.1"  # the address served; with allowed_hosts, what a Host header may name
    allowed_hosts: tuple[str, ...] = ()  # further names clients may reach the server by (DNS rebinding guard)
    body_timeout: float = 15.0  # seconds a request body may take to arrive before a 408
    metrics_public: bool = False  # serve /metrics without the API key

    def __post_init__(self) -> None:
        check_admission(self.admission, self.realtime_margin, self.first_audio_boost)
        # name -> whether 0 is allowed (no queue wait; no session cap)
        for name, zero_ok in (
            ("queue_timeout", True),
            ("ws_idle_timeout", False),
            ("send_timeout", False),
            ("max_session_seconds", True),
            ("body_timeout", False),
        ):
            value = getattr(self, name)
            number = not isinstance(value, bool) and isinstance(value, int | float)
            if not number or not (value > 0 or (zero_ok and value == 0)):
                bound = ">= 0" if zero_ok else "> 0"
                raise ValueError(f"--{name.replace('_', '-')} must be a number of seconds {bound}, got {value!r}")

    @property
    def session_cap(self) -> float | None:
        """Seconds a request or session may hold a slot, or None for no cap."""
        return self.max_session_seconds or None
