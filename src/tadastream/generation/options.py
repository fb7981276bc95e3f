"""Generation options, with the reference's (hume-tada 0.1.9) defaults, validated before any work."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


class GenerationInputError(ValueError):
    """Bad input to generate(); the message says how to fix it."""


@dataclass
class InferenceOptions:
    text_do_sample: bool = True
    text_temperature: float = 0.6
    text_top_k: int = 0
    text_top_p: float = 0.9
    text_repetition_penalty: float = 1.1
    acoustic_cfg_scale: float = 1.6
    duration_cfg_scale: float = 1.0
    cfg_schedule: Literal["constant", "linear", "cosine"] = "cosine"
    noise_temperature: float = 0.9
    num_flow_matching_steps: int = 10
    time_schedule: Literal["uniform", "cosine", "logsnr"] = "logsnr"
    num_acoustic_candidates: int = 1
    scorer: Literal["spkr_verification", "likelihood", "duration_median"] = "likelihood"
    spkr_verification_weight: float = 1.0
    speed_up_factor: float | None = None
    negative_condition_source: Literal["negative_step_output", "prompt", "zero"] = "negative_step_output"
    text_only_logit_scale: float = 0.0

    _CHOICES = {
        "cfg_schedule": ("constant", "linear", "cosine"),
        "time_schedule": ("uniform", "cosine", "logsnr"),
        "scorer": ("spkr_verification", "likelihood", "duration_median"),
        "negative_condition_source": ("negative_step_output", "prompt", "zero"),
    }

    def validate(self) -> InferenceOptions:
        for name, allowed in self._CHOICES.items():
            if getattr(self, name) not in allowed:
                raise GenerationInputError(f"{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
        if self.num_flow_matching_steps < 1 or self.num_acoustic_candidates < 1:
            raise GenerationInputError("num_flow_matching_steps and num_acoustic_candidates must be at least 1")
        if self.text_do_sample and self.text_temperature <= 0:
            raise GenerationInputError("text_temperature must be > 0 when text_do_sample is True")
        if not 0.0 <= self.text_top_p <= 1.0 or self.text_top_k < 0:
            raise GenerationInputError("text_top_p must be in [0, 1] and text_top_k >= 0")
        if self.noise_temperature < 0 or self.text_only_logit_scale < 0:
            raise GenerationInputError("noise_temperature and text_only_logit_scale must be >= 0")
        if self.speed_up_factor is not None and not self.speed_up_factor > 0:
            raise GenerationInputError("speed_up_factor must be a positive number (or None)")
        return self

    @property
    def guided(self) -> bool:
        """Whether each step runs a guidance row (classifier-free guidance on its own output)."""
        return self.acoustic_cfg_scale != 1.0 and self.negative_condition_source == "negative_step_output"

    @property
    def text_only(self) -> bool:
        """Whether each step runs a text-only row whose logits are mixed into the text sample."""
        return self.text_only_logit_scale > 0.0
