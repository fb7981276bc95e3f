"""Text-to-audio token alignment: where in a clip each transcript token is spoken.

The codec encoder needs one frame per text token (the frame whose acoustic vector the token
carries). A wav2vec2 CTC model over the LLM's vocabulary scores every (frame, token) pair at
50 Hz, and :func:`align_tokens` picks one strictly increasing frame per token maximising the
summed scores. Tie-breaking and float arithmetic follow the reference implementation so the
same logits give the same positions.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..audio import resample
from ..config import FRAME_RATE, AlignerConfig
from ..hub import (
    CheckpointError,
    PretrainedModule,
    load_weights,
    read_config,
    read_state_dict,
    resolve_checkpoint,
    resolve_dtype,
    save_checkpoint,
)

__all__ = ["AlignOutput", "Aligner", "TranscriptError", "align_tokens", "check_fits", "wav2vec2_large_config"]

ALIGNER_SAMPLE_RATE = 16000
# Key of the wav2vec2 architecture inside the aligner's config.json (written by save_pretrained;
# the published checkpoints do not carry it, so the wav2vec2-large architecture is assumed).
ENCODER_CONFIG_KEY = "encoder_config"


class TranscriptError(ValueError):
    """The transcript cannot be used for this clip (empty, too long, or not what is spoken)."""


def check_fits(num_tokens: int, num_frames: int) -> None:
    """Raise :class:`TranscriptError` unless ``num_tokens`` (>= 1) tokens fit in ``num_frames`` frames."""
    if num_tokens == 0:
        raise TranscriptError("the transcript has no tokens to align; give the words spoken in the clip")
    if num_tokens > num_frames:
        raise TranscriptError(
            f"the transcript has {num_tokens} tokens but the clip has only {num_frames} aligner frames "
            f"({num_frames / FRAME_RATE:.2f} s): the transcript is too long for the clip or does not match it"
        )


def align_tokens(scores: torch.Tensor, tokens: torch.Tensor) -> list[int]:
    """Best monotonic placement of ``tokens`` over the frames of ``scores`` (L, V).

    Returns one 0-based frame per token, strictly increasing, maximising the sum of
    ``scores[frame, token]``. Ties go the reference's way: a token takes the latest frame
    among equally good ones. Works on CPU in float32 like the reference (whose diagonal is a
    ``torch.cumsum``, accumulated in double), so identical inputs give identical positions.

    Raises :class:`TranscriptError` if there are no tokens or more tokens than frames.
    """
    tokens = torch.as_tensor(tokens).reshape(-1).long().cpu()
    scores = scores.detach().to("cpu", torch.float32)
    if scores.dim() != 2:
        raise ValueError(f"scores must be (frames, vocab), got shape {tuple(scores.shape)}")
    num_frames, num_tokens = scores.shape[0], tokens.numel()
    check_fits(num_tokens, num_frames)
    token_scores = scores[:, tokens]  # (L, T)
    slack = num_frames - num_tokens
    # Score of the path that puts token j on frame j for every j (the only one reaching (j, j)).
    diagonal = torch.cumsum(token_scores.diagonal().contiguous(), dim=0)

    # Column j holds best[i] for frames i in [j, j + slack] (frames outside that band cannot be
    # on a complete path). best[i] = max over i' <= i of (best_prev[i' - 1] + score[i', j]),
    # a running max: cummax keeps the later frame on ties, as the reference does.
    best, where = torch.cummax(token_scores[: slack + 1, 0], dim=0)
    chosen = [where]
    for j in range(1, num_tokens):
        candidates = torch.cat((diagonal[j : j + 1], best[1:] + token_scores[j + 1 : j + slack + 1, j]))
        best, where = torch.cummax(candidates, dim=0)
        chosen.append(where + j)

    positions = [0] * num_tokens
    frame = num_frames - 1
    for j in range(num_tokens - 1, -1, -1):
        positions[j] = int(chosen[j][frame - j])
        frame = positions[j] - 1
    return positions


def _conv_output_length(num_samples: int, kernels: list[int], strides: list[int]) -> int:
    for kernel, stride in zip(kernels, strides):
        if num_samples < kernel:
            return 0
        num_samples = (num_samples - kernel) // stride + 1
    return num_samples


def wav2vec2_large_config(vocab_size: int, **overrides: Any):
    """The ``facebook/wav2vec2-large`` architecture, built locally (no hub call)."""
    from transformers import Wav2Vec2Config

    values: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "feat_extract_norm": "group",
        "feat_extract_activation": "gelu",
        "conv_dim": [512] * 7,
        "conv_stride": [5, 2, 2, 2, 2, 2, 2],
        "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
        "conv_bias": False,
        "num_conv_pos_embeddings": 128,
        "num_conv_pos_embedding_groups": 16,
        "do_stable_layer_norm": False,
        "mask_time_prob": 0.05,
    }
    values.update(overrides)
    return Wav2Vec2Config(**values)


def _rename_legacy_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old transformers stored the positional conv's weight norm as weight_g / weight_v."""
    renamed = {}
    for key, value in state.items():
        if key.endswith(".weight_g"):
            key = key[: -len("weight_g")] + "parametrizations.weight.original0"
        elif key.endswith(".weight_v"):
            key = key[: -len("weight_v")] + "parametrizations.weight.original1"
        renamed[key] = value
    return renamed


def _load_tokenizer(source: Any, folder: Path | None, config: AlignerConfig):
    """An explicit tokenizer (object or path/hub id), else the folder's files, else tokenizer_name."""
    if source is not None and not isinstance(source, str | os.PathLike):
        return source
    from transformers import AutoTokenizer

    if (
        source is None
        and folder is not None
        and any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))
    ):
        source = folder
    if source is None:
        source = config.tokenizer_name
    try:
        return AutoTokenizer.from_pretrained(str(source))
    except OSError as exc:
        raise CheckpointError(
            f"could not load the aligner tokenizer {str(source)!r} ({str(exc).splitlines()[0]}); "
            "pass tokenizer=<local tokenizer dir> (the Llama 3.2 tokenizer)"
        ) from exc


@dataclass
class AlignOutput:
    token_positions: torch.Tensor  # (B, T) 1-based frame of each token, 0 for padding
    token_masks: torch.Tensor  # (B, frames) 1 at the chosen frames
    logits: torch.Tensor | None = None


class Aligner(PretrainedModule):
    """wav2vec2 CTC model over the LLM vocabulary (``encoder.*`` keys as in the checkpoints)."""

    config_class = AlignerConfig
    default_subfolder = "aligner"
    # masked_spec_embed only serves training-time masking; tolerate checkpoints without it.
    optional_keys = (r"encoder\.wav2vec2\.masked_spec_embed",)

    def __init__(self, config: AlignerConfig | None = None, *, tokenizer: Any = None, wav2vec2_config: Any = None):
        super().__init__()
        from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

        self.config = config = config or AlignerConfig()
        self.tokenizer = _load_tokenizer(tokenizer, None, config)
        if wav2vec2_config is None:
            stored = config.extra.get(ENCODER_CONFIG_KEY)
            wav2vec2_config = stored if stored is not None else wav2vec2_large_config(len(self.tokenizer))
        if isinstance(wav2vec2_config, dict):
            wav2vec2_config = Wav2Vec2Config(**wav2vec2_config)
        self.encoder_config = wav2vec2_config
        self.encoder = Wav2Vec2ForCTC(wav2vec2_config)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        subfolder: str | None = None,
        *,
        tokenizer: Any = None,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        torch_dtype: str | torch.dtype | None = torch.float32,
        device: str | torch.device | None = None,
        **_ignored: Any,
    ) -> Aligner:
        """Load ``aligner/`` (or ``aligner-<lang>/``) of a codec; ``tokenizer`` avoids a hub lookup."""
        sub = subfolder if subfolder is not None else cls.default_subfolder
        local = Path(name_or_path).expanduser()
        if local.is_dir() and (local / "config.json").is_file() and not (local / sub).is_dir():
            sub = None  # the directory is the aligner itself
        folder = resolve_checkpoint(
            name_or_path, sub, revision=revision, token=token, cache_dir=cache_dir, local_files_only=local_files_only
        )
        config = AlignerConfig.from_dict(read_config(folder))
        tok = _load_tokenizer(tokenizer, folder, config)
        state = _rename_legacy_keys(read_state_dict(folder))
        w2v = config.extra.get(ENCODER_CONFIG_KEY)
        if w2v is None:
            # Only which optional tensors exist differs between wav2vec2 variants we may meet.
            has_bias = "encoder.wav2vec2.feature_extractor.conv_layers.0.conv.bias" in state
            layer_norm = "encoder.wav2vec2.feature_extractor.conv_layers.1.layer_norm.weight" in state
            w2v = wav2vec2_large_config(
                len(tok), conv_bias=has_bias, feat_extract_norm="layer" if layer_norm else "group"
            )
        model = _build_without_init(cls, config, tok, w2v)
        load_weights(model, state, optional=cls.optional_keys, source=str(folder))
        if "encoder.wav2vec2.masked_spec_embed" not in state and hasattr(model.encoder.wav2vec2, "masked_spec_embed"):
            with torch.no_grad():
                model.encoder.wav2vec2.masked_spec_embed.zero_()  # never initialised otherwise
        model.to(device=device, dtype=resolve_dtype(torch_dtype))
        return model.eval()

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """config.json (with the wav2vec2 architecture), model.safetensors and the tokenizer files."""
        config = self.config.to_dict()
        config[ENCODER_CONFIG_KEY] = json.loads(self.encoder_config.to_json_string(use_diff=False))
        out = save_checkpoint(self, config, folder)
        if hasattr(self.tokenizer, "save_pretrained"):
            self.tokenizer.save_pretrained(str(out))
        return out

    def logit_frames(self, num_samples_16k: int) -> int:
        """How many logit frames wav2vec2 gives for this many 16 kHz samples."""
        return _conv_output_length(
            num_samples_16k, list(self.encoder_config.conv_kernel), list(self.encoder_config.conv_stride)
        )

    @torch.no_grad()
    def logits(self, audio_16k: torch.Tensor) -> torch.Tensor:
        """CTC logits (B, frames, vocab) for unpadded 16 kHz audio (B, samples)."""
        param = next(self.encoder.parameters())
        audio_16k = audio_16k.to(param.device, param.dtype)
        # An all-true mask, as the reference passes one: keeps its numerics.
        mask = torch.ones(audio_16k.shape, dtype=torch.long, device=param.device)
        return self.encoder(audio_16k, attention_mask=mask).logits

    @torch.no_grad()
    def align(
        self, audio_16k: torch.Tensor, tokens: torch.Tensor, num_frames: int | None = None, return_logits: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Align one clip: 1-D 16 kHz audio and its (T,) tokens.

        Returns 1-based positions (T,), a 0/1 mask over ``num_frames`` frames (default: the
        clip's length at 50 Hz, widened if needed) and optionally the logits (frames, vocab).
        The length check runs before the network does.
        """
        audio_16k = audio_16k.reshape(-1)
        tokens = torch.as_tensor(tokens).reshape(-1).long()
        check_fits(tokens.numel(), self.logit_frames(audio_16k.numel()))
        logits = self.logits(audio_16k.unsqueeze(0))[0]
        selected = align_tokens(logits, tokens.cpu())
        if num_frames is None:
            num_frames = math.ceil(audio_16k.numel() * FRAME_RATE / ALIGNER_SAMPLE_RATE)
        num_frames = max(num_frames, selected[-1] + 1)
        device = logits.device
        mask = torch.zeros(num_frames, dtype=torch.long, device=device)
        index = torch.tensor(selected, dtype=torch.long, device=device)
        mask[index] = 1
        return index + 1, mask, logits if return_logits else None

    def forward(
        self,
        audio: torch.Tensor,
        text_tokens: torch.Tensor | list[list[int]] | None = None,
        audio_length: torch.Tensor | None = None,
        sample_rate: int = 24000,
        return_logits: bool = False,
        text: list[str] | str | None = None,
    ) -> AlignOutput:
        """Align a padded batch ``audio`` (B, samples) at ``sample_rate`` with its tokens.

        ``text_tokens`` is (B, T) padded with the tokenizer's eos id (or a list of token lists);
        without it ``text`` is tokenized. Each clip runs on its own (no padding reaches the
        network). Positions are 1-based, padded with 0; masks span ceil(len / sr * 50) frames.
        """
        if audio.dim() == 1:
            audio = audio.unsqueeze(0)
        batch = audio.shape[0]
        if audio_length is None:
            lengths = [audio.shape[1]] * batch
        else:
            lengths = [int(n) for n in torch.as_tensor(audio_length).reshape(-1).tolist()]
        if text_tokens is None:
            if text is None:
                raise ValueError("give text_tokens or text")
            text = [text] if isinstance(text, str) else list(text)
            token_lists = [self.tokenizer.encode(t, add_special_tokens=False) for t in text]
        elif isinstance(text_tokens, torch.Tensor):
            rows = text_tokens.reshape(batch, -1) if text_tokens.dim() != 1 else text_tokens.unsqueeze(0)
            eos = getattr(self.tokenizer, "eos_token_id", None)
            token_lists = [[t for t in row.tolist() if t != eos] for row in rows]
        else:
            token_lists = [list(t) for t in text_tokens]
        if len(token_lists) != batch:
            raise ValueError(f"{batch} clips but {len(token_lists)} token sequences")

        num_frames = [math.ceil(n * FRAME_RATE / sample_rate) for n in lengths]
        positions, masks, all_logits = [], [], []
        for row, n, tokens in zip(audio, lengths, token_lists):
            clip = resample(row[:n].float(), sample_rate, ALIGNER_SAMPLE_RATE)
            pos, mask, logits = self.align(clip, torch.tensor(tokens, dtype=torch.long), max(num_frames), return_logits)
            positions.append(pos)
            masks.append(mask)
            all_logits.append(logits)
        width = max(m.numel() for m in masks)
        token_masks = torch.stack([nn.functional.pad(m, (0, width - m.numel())) for m in masks])
        token_positions = nn.utils.rnn.pad_sequence(positions, batch_first=True, padding_value=0)
        logits = None
        if return_logits:
            logits = nn.utils.rnn.pad_sequence(all_logits, batch_first=True, padding_value=0.0)
        return AlignOutput(token_positions=token_positions, token_masks=token_masks, logits=logits)


def _build_without_init(cls, config: AlignerConfig, tokenizer: Any, w2v: Any) -> Aligner:
    """Build the model skipping random init (every weight is loaded next), if transformers can."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers: just pay for the init
        return cls(config, tokenizer=tokenizer, wav2vec2_config=w2v)
    with no_init_weights():
        return cls(config, tokenizer=tokenizer, wav2vec2_config=w2v)
