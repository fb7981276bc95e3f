"""The ranges every front end accepts: the server's requests and the command line's flags.

One table, so ``tadastream speak`` refuses at once what the server would refuse, instead of
running for minutes on ``--flow-steps 100000``. Torch-free: the command line checks its flags
with it before importing anything heavy.
"""

from __future__ import annotations

__all__ = [
    "ADMISSION_POLICIES",
    "FLOAT_RANGES",
    "MAX_FIRST_CHUNK_MS",
    "MAX_SEED",
    "OPTION_LIMITS",
    "REALTIME_MARGIN",
    "SPEED_RANGE",
    "BOOST_POLICIES",
    "check_admission",
]

#: The largest seed a stream's generators take (torch seeds are signed 64-bit).
MAX_SEED = 2**63 - 1

#: The longest fixed first chunk a stream holds back, in milliseconds.
MAX_FIRST_CHUNK_MS = 60_000.0

#: ``speed`` (``speed_up_factor``): faster or slower speech, within what still sounds like speech.
SPEED_RANGE = (0.25, 4.0)

#: Caps on per-request integer options, so one request cannot monopolise the engine for minutes.
OPTION_LIMITS = {"num_flow_matching_steps": 64, "num_acoustic_candidates": 8}

#: The range each float option may take (beyond it the noise or the guidance overflows to inf/NaN
#: mid-generation instead of failing up front); :class:`tadastream.generation.InferenceOptions`
#: checks the same ranges.
FLOAT_RANGES = {
    "text_temperature": (0.0, 100.0),
    "text_top_p": (0.0, 1.0),
    "text_repetition_penalty": (0.0, 100.0),
    "acoustic_cfg_scale": (-100.0, 100.0),
    "duration_cfg_scale": (-100.0, 100.0),
    "noise_temperature": (0.0, 10.0),
    "spkr_verification_weight": (-1000.0, 1000.0),
    "speed_up_factor": (0.0, 100.0),
    "text_only_logit_scale": (0.0, 100.0),
}

#: How a server admits requests: ``slots``, while a stream slot is free; ``realtime``, also while its
#: engine's capacity model predicts every stream stays ahead of playback with one more.
ADMISSION_POLICIES = ("slots", "realtime")

#: ``realtime`` admission: predicted tick time times this must stay below each stream's audio per tick.
REALTIME_MARGIN = 1.25

#: When an engine gives a stream joining beside others a boost pass (its steps before its first frame
#: run twice a tick): ``guarded``, while every stream being heard stays ahead of playback; ``always``;
#: ``off``.
BOOST_POLICIES = ("guarded", "always", "off")


def check_admission(admission: object, realtime_margin: object, first_audio_boost: object = "guarded") -> None:
    """Raise ValueError naming the flag for an ``--admission``, ``--realtime-margin`` or
    ``--first-audio-boost`` that cannot work: one check for every server that takes them, so each
    refuses them in the same words."""
    if first_audio_boost not in BOOST_POLICIES:
        raise ValueError(f"--first-audio-boost must be one of {', '.join(BOOST_POLICIES)}, got {first_audio_boost!r}")
    if admission not in ADMISSION_POLICIES:
        raise ValueError(f"--admission must be one of {', '.join(ADMISSION_POLICIES)}, got {admission!r}")
    margin = realtime_margin
    if isinstance(margin, bool) or not isinstance(margin, int | float) or not margin >= 1:
        raise ValueError(f"--realtime-margin must be a number >= 1, got {margin!r}")
