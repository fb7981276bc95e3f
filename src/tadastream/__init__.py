"""tadastream: TADA text-to-speech with true end-to-end streaming.

Public names mirror hume-tada 0.1.9 so its users switch by changing an import.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "TadaForCausalLM": "tadastream.model",
    "InferenceOptions": "tadastream.generation",
    "GenerationOutput": "tadastream.generation",
    "StepOutput": "tadastream.generation",
    "SyncTokGenerationOutput": "tadastream.generation",
    "GenerationInputError": "tadastream.generation",
    "AudioStream": "tadastream.drivers.stream",
    "Engine": "tadastream.engine",
    "CompileOptions": "tadastream.engine",
    "TextInput": "tadastream.generation",
    "SpeechRequest": "tadastream.generation",
    "TextLayout": "tadastream.generation",
    "StreamingDecoder": "tadastream.codec.streaming",
    "Decoder": "tadastream.codec.decoder",
    "Encoder": "tadastream.codec.encoder",
    "EncoderOutput": "tadastream.codec.encoder",
    "Aligner": "tadastream.codec.aligner",
    "AcousticSpkrVerf": "tadastream.codec.spkr_verf",
    "DecoderConfig": "tadastream.config",
    "EncoderConfig": "tadastream.config",
    "CheckpointError": "tadastream.hub",
    "AudioError": "tadastream.audio",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    """Import on first use: ``import tadastream`` stays cheap for the CLI and the server."""
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tadastream' has no attribute {name!r}")


if TYPE_CHECKING:  # pragma: no cover
    from .audio import AudioError
    from .codec.aligner import Aligner
    from .codec.decoder import Decoder
    from .codec.encoder import Encoder, EncoderOutput
    from .codec.spkr_verf import AcousticSpkrVerf
    from .codec.streaming import StreamingDecoder
    from .config import DecoderConfig, EncoderConfig
    from .drivers.stream import AudioStream
    from .engine import CompileOptions, Engine
    from .generation import (
        GenerationInputError,
        GenerationOutput,
        InferenceOptions,
        SpeechRequest,
        StepOutput,
        SyncTokGenerationOutput,
        TextInput,
        TextLayout,
    )
    from .hub import CheckpointError
    from .model import TadaForCausalLM
