"""Server limits, in a module of their own so every part of the server can name the type without importing the app."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class ServerSettings:
    """Limits and switches of one server; ``tadastream serve`` options map onto these fields."""

    model_id: str = "demo"
    max_streams: int = 4
    queue: int = 16
    queue_timeout: float = 30.0
    api_key: str | None = None
    max_input_chars: int = 4096
    max_body_bytes: int = 256 * 1024
    max_voice_bytes: int = 16 * 1024 * 1024
    max_voice_seconds: float = 60.0
    voices_dir: str | None = None
    ws_idle_timeout: float = 60.0
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API ("*" for any)
