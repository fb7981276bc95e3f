"""The codec encoder: a voice prompt (audio + transcript) -> one acoustic vector per text token.

A waveform CNN turns 24 kHz audio into 50 Hz frames, the aligner marks the frame where each
transcript token is spoken, and a block-masked transformer summarises each token's stretch of
audio into its marked frame. Those vectors (``token_values``) are what the LLM continues from,
so an :class:`EncoderOutput` is a reusable "encoded voice": save it once, load it without the
encoder, aligner or ASR model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..audio import AudioError, check_prompt_audio, load_audio, resample, to_mono
from ..config import SAMPLE_RATE, EncoderConfig
from ..files import replacing
from ..hub import CheckpointError, PretrainedModule
from ..nn.attention import LocalAttentionStack, encoder_attention_mask
from ..nn.conv import Snake, WNConv1d
from ..scripts import LANGUAGES, canonical_language
from ..text import normalize_text
from .aligner import ALIGNER_SAMPLE_RATE, FRAME_RATE, Aligner, TranscriptError, _load_tokenizer, check_fits
from .decoder import CODEC_IGNORED_KEYS
from .wave import ResidualUnit

__all__ = [
    "ALIGNER_LANGUAGES",
    "ASR_MODEL_NAME",
    "Encoder",
    "EncoderOutput",
    "VoiceFileError",
    "aligner_subfolder",
    "finish_transcript",
]

#: Zero samples appended before the waveform CNN, as in training (two frames' worth).
END_PADDING = 960
ASR_MODEL_NAME = "nvidia/parakeet-ctc-1.1b"
#: Languages with their own aligner (``aligner-<lang>/``); English uses ``aligner/``.
ALIGNER_LANGUAGES = ("ar", "ch", "de", "es", "fr", "it", "ja", "pl", "pt")

_VOICE_FORMAT = "tadastream.encoder_output"
_VOICE_VERSION = "1"


class VoiceFileError(ValueError):
    """A file that is not a readable encoded voice; the message says what to do, ``reason`` what
    is wrong with it (without the path)."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason


def aligner_subfolder(language: str | None) -> str:
    """``aligner`` for English (None / "en"), ``aligner-<lang>`` for the other published languages
    (Chinese, ``zh``, is the codec's ``ch``)."""
    if language is None:
        return "aligner"
    try:
        lang = canonical_language(language)
    except ValueError:
        raise ValueError(f"no aligner for language {language!r}; use one of {', '.join(LANGUAGES)}") from None
    return "aligner" if lang == "en" else f"aligner-{'ch' if lang == 'zh' else lang}"


def voice_language(path: str | os.PathLike) -> str | None:
    """The language recorded in a ``.voice`` file, from its header alone (None: not recorded, or not
    a voice file; :meth:`EncoderOutput.load` says why)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            language = (handle.metadata() or {}).get("language")
    except Exception:  # noqa: BLE001 - any unreadable file simply has no known language
        return None
    return language if language in LANGUAGES else None


def finish_transcript(text: str) -> str:
    """ASR post-processing as in the reference: strip, and end with "." after a letter or digit."""
    text = text.strip()
    if not text:
        raise TranscriptError("speech recognition found no words in the prompt audio; pass text=...")
    return f"{text}." if text[-1].isalnum() else text


# --------------------------------------------------------------------------------------------
# the encoded voice


@dataclass
class EncoderOutput:
    """An encoded voice prompt; field names and order follow the reference's ``EncoderOutput``.

    ``audio`` (B, samples) at ``sample_rate``, ``audio_len`` (B,) valid samples, ``text`` one
    transcript per item, ``token_positions`` (B, T) 1-based frame of each token,
    ``token_values`` (B, T, 512) normalised acoustic vectors, ``token_masks`` (B, frames).
    """

    audio: torch.Tensor
    audio_len: torch.Tensor
    text: list[str] | None
    token_positions: torch.Tensor
    token_values: torch.Tensor
    sample_rate: int = SAMPLE_RATE
    text_tokens: torch.Tensor | None = None
    text_tokens_len: torch.Tensor | None = None
    encoded_expanded: torch.Tensor | None = None
    non_sampled_encoded_expanded: torch.Tensor | None = None
    text_emb_expanded: torch.Tensor | None = None
    token_masks: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    text_emb_reduced: torch.Tensor | None = None
    #: The language spoken in the recording (one of :data:`~tadastream.scripts.LANGUAGES`), when known.
    language: str | None = None

    @classmethod
    def empty(cls, device: torch.device | str, token_dim: int = 512) -> EncoderOutput:
        """A prompt with no audio and no tokens (generation without a reference voice)."""
        return cls(
            audio=torch.zeros(1, 0, device=device),
            audio_len=torch.zeros(1, device=device),
            text=[""],
            text_tokens=torch.zeros(1, 0, dtype=torch.long, device=device),
            text_tokens_len=torch.zeros(1, dtype=torch.long, device=device),
            token_positions=torch.zeros(1, 0, dtype=torch.long, device=device),
            token_values=torch.zeros(1, 0, token_dim, device=device),
        )

    def _tensor_fields(self) -> dict[str, torch.Tensor]:
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> EncoderOutput:
        """A copy on ``device`` with floating tensors cast to ``dtype`` (integer tensors keep theirs)."""
        moved = {
            name: value.to(device=device, dtype=dtype if value.is_floating_point() else None)
            for name, value in self._tensor_fields().items()
        }
        text = list(self.text) if self.text is not None else None
        return dataclasses.replace(self, text=text, **moved)

    def save(self, path: str | os.PathLike) -> Path:
        """Write one safetensors file: the tensors, plus text and sample rate as JSON metadata.

        No pickle, so loading a voice file can never run code. The file is written under a
        temporary name and renamed, so an interrupted save never leaves a truncated voice.
        """
        from safetensors.torch import save_file

        target = Path(path)
        tensors = {name: value.detach().to("cpu").contiguous().clone() for name, value in self._tensor_fields().items()}
        metadata = {
            "format": _VOICE_FORMAT,
            "version": _VOICE_VERSION,
            "text": json.dumps(self.text, ensure_ascii=False),
            "sample_rate": json.dumps(int(self.sample_rate)),
        }
        if self.language is not None:
            metadata["language"] = canonical_language(self.language)
        with replacing(target) as temp:
            save_file(tensors, str(temp), metadata=metadata)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> EncoderOutput:
        """Read a file written by :meth:`save`; anything else raises :class:`VoiceFileError`."""
        from safetensors import safe_open

        source = Path(path)
        if not source.is_file():
            raise VoiceFileError(f"voice file not found: {source}; check the path")
        try:
            with safe_open(str(source), framework="pt", device="cpu") as handle:
                metadata = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        except Exception as exc:  # noqa: BLE001 - any parse failure means "not a voice file"
            with open(source, "rb") as fh:
                head = fh.read(4)
            hint = (
                "it looks like a pickle/torch.save file (e.g. from hume-tada), which is not loaded for safety; "
                "re-encode the recording with `tadastream encode-voice`"
                if head[:2] == b"PK" or head[:1] == b"\x80"
                else "it is damaged or another kind of file; re-encode the recording with `tadastream encode-voice` "
                "(or EncoderOutput.save)"
            )
            raise VoiceFileError(f"{source} is not an encoded voice file: {hint}") from exc
        return cls._from_parts(source, metadata, tensors).to(device)

    @classmethod
    def _from_parts(cls, source: Path, metadata: dict[str, str], tensors: dict[str, torch.Tensor]) -> EncoderOutput:
        def bad(why: str) -> VoiceFileError:
            return VoiceFileError(f"{source} is not a valid encoded voice file: {why}; re-encode the prompt audio", why)

        if metadata.get("format") != _VOICE_FORMAT:
            raise bad("it is a safetensors file without encoded-voice metadata")
        if metadata.get("version") != _VOICE_VERSION:
            raise bad(f"format version {metadata.get('version')!r} is not supported (expected {_VOICE_VERSION})")
        try:
            text = json.loads(metadata["text"])
            sample_rate = json.loads(metadata["sample_rate"])
        except (KeyError, ValueError) as exc:
            raise bad(f"metadata is damaged ({exc})") from exc
        if text is not None and not (isinstance(text, list) and all(isinstance(t, str) for t in text)):
            raise bad("its text is not a list of strings")
        if not isinstance(sample_rate, int) or sample_rate <= 0:
            raise bad(f"its sample rate {sample_rate!r} is not a positive integer")
        language = metadata.get("language")
        if language is not None and language not in LANGUAGES:
            raise bad(f"its language {language!r} is not one of {', '.join(LANGUAGES)}")
        fields = {f.name for f in dataclasses.fields(cls)} - {"text", "sample_rate", "language"}
        unknown = sorted(set(tensors) - fields)
        if unknown:
            raise bad(f"it holds unknown tensor {unknown[0]!r}")
        missing = [name for name in ("audio", "audio_len", "token_positions", "token_values") if name not in tensors]
        if missing:
            raise bad(f"tensor {missing[0]!r} is missing")
        values, positions = tensors["token_values"], tensors["token_positions"]
        if values.dim() != 3 or positions.dim() != 2 or tuple(values.shape[:2]) != tuple(positions.shape):
            raise bad(f"token_values {tuple(values.shape)} and token_positions {tuple(positions.shape)} do not match")
        if text is not None and len(text) != values.shape[0]:
            raise bad(f"it has {len(text)} transcripts for {values.shape[0]} prompts")
        problem = _first_problem(tensors)
        if problem:
            raise bad(problem)
        return cls(text=text, sample_rate=sample_rate, language=language, **tensors)

    def problem(self) -> str | None:
        """What makes this voice unusable (NaN values, positions out of order, lengths that do not
        add up), or None; :meth:`load` refuses such files, callers holding one in memory can ask."""
        return _first_problem(self._tensor_fields())

    def alignment_text(self, tokenizer: Any, index: int = 0) -> str:
        """Tokens at their frames (one character per 20 ms frame), to eyeball a prompt's alignment."""
        if self.text_tokens is None or self.token_positions.numel() == 0:
            return "no alignment data"
        count = int(self.text_tokens_len[index]) if self.text_tokens_len is not None else self.text_tokens.shape[1]
        ids = self.text_tokens[index, :count].tolist()
        positions = self.token_positions[index, :count].tolist()
        seconds = int(self.audio_len[index]) / self.sample_rate if self.audio.numel() else 0.0
        pieces, frame, previous = [], 0, ""
        for i, pos in enumerate(positions):
            decoded = tokenizer.decode(ids[: i + 1], skip_special_tokens=True)
            label, previous = decoded[len(previous) :], decoded  # prefix difference keeps multi-byte chars
            pieces.append("·" * max(0, int(pos) - 1 - frame) + (label if label.strip() else "_"))
            frame = int(pos)
        return f"{count} tokens | {seconds:.2f}s audio\n" + "".join(pieces)

    def print_alignment(self, tokenizer: Any) -> None:
        print(self.alignment_text(tokenizer))


# --------------------------------------------------------------------------------------------
# the network


def _first_problem(tensors: dict[str, torch.Tensor]) -> str | None:
    """The first inconsistency in an encoded voice's tensors (shapes of token_values and
    token_positions already agree), or None."""
    for name, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return f"{name} holds NaN or infinite values"
    audio, audio_len, positions = tensors["audio"], tensors["audio_len"], tensors["token_positions"]
    batch = positions.shape[0]
    if positions.is_floating_point() or positions.dtype == torch.bool:
        return f"token_positions must be integers, not {positions.dtype}"
    if positions.numel():
        if int(positions.min()) < 0:
            return "token_positions has negative frames"
        valid = positions > 0  # frames are 1-based; zeros pad shorter prompts of a batch
        if bool((~valid[:, :-1] & valid[:, 1:]).any()):
            return "token_positions has a token after the padding"
        rising = positions[:, 1:] > positions[:, :-1]
        if bool((valid[:, 1:] & ~rising).any()):
            return "token_positions are not strictly increasing"
    if audio.dim() != 2 or audio.shape[0] != batch or audio_len.reshape(-1).shape[0] != batch:
        return f"audio {tuple(audio.shape)} and audio_len {tuple(audio_len.shape)} do not fit {batch} prompt(s)"
    if bool((audio_len < 0).any()) or bool((audio_len > audio.shape[-1]).any()):
        return f"audio_len is outside 0..{audio.shape[-1]} samples"
    tokens, lengths = tensors.get("text_tokens"), tensors.get("text_tokens_len")
    if tokens is not None:
        if tokens.is_floating_point() or tokens.dim() != 2 or tokens.shape[0] != batch:
            return f"text_tokens must be integer ids of shape ({batch}, N), not {tokens.dtype} {tuple(tokens.shape)}"
        if tokens.numel() and int(tokens.min()) < 0:
            return "text_tokens has negative ids"
    if lengths is not None:
        limit = tokens.shape[1] if tokens is not None else 0
        if lengths.reshape(-1).shape[0] != batch or bool((lengths < 0).any()) or bool((lengths > limit).any()):
            return f"text_tokens_len is outside 0..{limit} or not one per prompt"
    masks = tensors.get("token_masks")
    if masks is not None and masks.numel() and not bool(((masks == 0) | (masks == 1)).all()):
        return "token_masks holds values other than 0 and 1"
    return None


class EncoderBlock(nn.Module):
    """Three residual units at ``dim / 2`` channels, then a strided conv to ``dim`` (downsample)."""

    def __init__(self, dim: int, stride: int):
        super().__init__()
        half = dim // 2
        self.block = nn.Sequential(
            ResidualUnit(half, 1),
            ResidualUnit(half, 3),
            ResidualUnit(half, 9),
            Snake(half),
            WNConv1d(half, dim, 2 * stride, stride=stride, padding=math.ceil(stride / 2)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class WavEncoder(nn.Module):
    """Waveform (B, 1, S) -> frames (B, out_dim, ~S / prod(strides)); channels double per block from 64."""

    def __init__(self, strides: Sequence[int], out_dim: int, base_channels: int = 64):
        super().__init__()
        layers: list[nn.Module] = [WNConv1d(1, base_channels, 7, padding=3)]
        dim = base_channels
        for stride in strides:
            dim *= 2
            layers.append(EncoderBlock(dim, stride))
        layers += [Snake(dim), WNConv1d(dim, out_dim, 3, padding=1)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Encoder(PretrainedModule):
    """Voice prompt -> :class:`EncoderOutput`. Load with ``Encoder.from_pretrained(codec, language=...)``.

    The aligner (and, without a transcript, the ASR model) is loaded on first use only, so an
    encoder given ready-made token positions never touches them.
    """

    config_class = EncoderConfig
    default_subfolder = "encoder"
    # Buffers we recompute, and lazily attached helpers a reference-saved encoder may carry.
    ignore_keys = (*CODEC_IGNORED_KEYS, r"_aligner\..*", r"_parakeet_ctc_1_1b\..*")
    asr_model_name = ASR_MODEL_NAME

    def __init__(self, config: EncoderConfig | None = None, *, tokenizer: Any = None, aligner: Aligner | None = None):
        super().__init__()
        self.config = config = config or EncoderConfig()
        # The reference fixes the CNN's first width at 64; small test checkpoints may narrow it.
        base_channels = int(config.extra.get("wav_encoder_base_channels", 64))
        self.wav_encoder = WavEncoder(config.strides, config.hidden_dim, base_channels)
        self.local_attention_encoder = LocalAttentionStack(
            config.hidden_dim, config.num_attn_layers, config.num_attn_heads, config.attn_dim_feedforward
        )
        self.hidden_linear = (
            nn.Linear(config.hidden_dim, config.embed_dim) if config.hidden_dim != config.embed_dim else nn.Identity()
        )
        self.pos_emb = nn.Embedding(2, config.hidden_dim)
        # Helpers live outside the module tree: not saved with the encoder, not cast by .to(dtype).
        self.__dict__["_tokenizer"] = tokenizer
        #: The language of the recordings this encoder aligns (its aligner's), recorded in each voice.
        self.language: str | None = None
        self.__dict__["_aligner"] = aligner
        self.__dict__["_aligner_source"] = None
        self.__dict__["_asr"] = None

    # ---- loading -----------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        subfolder: str | None = "encoder",
        language: str | None = None,
        *,
        tokenizer: Any = None,
        **hub_kwargs: Any,
    ) -> Encoder:
        """Load ``encoder/`` of a codec (hub id or directory) and note where its aligner is.

        ``language`` picks ``aligner-<lang>/`` (ar, ch, de, es, fr, it, ja, pl, pt; default
        English ``aligner/``). ``tokenizer`` (object or local path) is used for transcripts and
        handed to the aligner, which avoids fetching the gated Llama tokenizer.
        """
        aligner_sub = aligner_subfolder(language)
        model = super().from_pretrained(name_or_path, subfolder, **hub_kwargs)
        model.__dict__["_tokenizer"] = tokenizer
        model.language = canonical_language(language or "en")
        keep = ("revision", "token", "cache_dir", "local_files_only")
        model.__dict__["_aligner_source"] = (
            name_or_path,
            subfolder,
            aligner_sub,
            {k: v for k, v in hub_kwargs.items() if k in keep},
        )
        return model

    @property
    def aligner(self) -> Aligner:
        """The aligner, loaded from the codec on first access."""
        if self._aligner is None:
            # Building it may draw random numbers; keep the caller's seeded sampling reproducible.
            with torch.random.fork_rng(devices=[]):
                self.__dict__["_aligner"] = self._load_aligner()
        aligner = self._aligner
        device = self.pos_emb.weight.device
        if next(aligner.parameters()).device != device:
            aligner.to(device)
        return aligner

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "aligner":  # nn.Module would register it as a submodule (and save its weights)
            self.__dict__["_aligner"] = value
        else:
            super().__setattr__(name, value)

    def _load_aligner(self) -> Aligner:
        if self._aligner_source is None:
            raise CheckpointError(
                "this encoder has no aligner: load it with Encoder.from_pretrained(<codec>), set "
                "encoder.aligner, or pass token_positions"
            )
        name, subfolder, aligner_sub, hub_kwargs = self._aligner_source
        device = self.pos_emb.weight.device
        local = Path(name).expanduser()
        if local.exists():
            if (local / aligner_sub).is_dir():
                return Aligner.from_pretrained(local / aligner_sub, None, tokenizer=self._tokenizer, device=device)
            sibling = local.parent / aligner_sub
            loaded_from_self = subfolder is None or not (local / subfolder).is_dir()
            if loaded_from_self and sibling.is_dir():
                return Aligner.from_pretrained(sibling, None, tokenizer=self._tokenizer, device=device)
            raise CheckpointError(
                f"no aligner at {local / aligner_sub}: point Encoder.from_pretrained at the codec directory "
                "holding encoder/ and aligner/, or pass token_positions"
            )
        return Aligner.from_pretrained(name, aligner_sub, tokenizer=self._tokenizer, device=device, **hub_kwargs)

    @property
    def tokenizer(self) -> Any:
        """The explicit tokenizer if one was given, else the aligner's (loading the aligner)."""
        if self._tokenizer is not None:
            if isinstance(self._tokenizer, str | os.PathLike):
                self.__dict__["_tokenizer"] = _load_tokenizer(self._tokenizer, None, None)
            return self._tokenizer
        return self.aligner.tokenizer

    def _tokenizer_at_hand(self) -> Any | None:
        if self._tokenizer is not None or self._aligner is not None:
            return self.tokenizer
        return None

    # ---- the network -------------------------------------------------------------------------

    def encode_frames(self, audio: torch.Tensor, token_masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden frames (B, F, embed) for 24 kHz ``audio`` (B, S) and marks (B, any length).

        The marks are zero-padded (or cut) to the F frames the CNN yields; returns them too.
        """
        param = self.pos_emb.weight
        x = F.pad(audio.to(param.device, param.dtype).unsqueeze(1), (0, END_PADDING))
        hidden = self.wav_encoder(x).transpose(1, 2)
        frames = hidden.shape[1]
        marks = (token_masks.to(param.device) != 0).long()
        marks = marks[:, :frames] if marks.shape[1] >= frames else F.pad(marks, (0, frames - marks.shape[1]))
        hidden = hidden + self.pos_emb(marks)
        hidden = self.local_attention_encoder(hidden, encoder_attention_mask(marks))
        return self.hidden_linear(hidden), marks

    def sample(
        self, x: torch.Tensor, dist_type: str | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Training-time noise on the vectors; draws from ``generator``, else torch's global RNG (as
        the reference)."""
        dist_type = dist_type or self.config.dist_type

        def noise(shape) -> torch.Tensor:
            return torch.randn(shape, device=x.device, dtype=x.dtype, generator=generator)

        if dist_type == "fixed":
            return x + noise(x.shape) * self.config.std
        if dist_type == "gaussian":
            scale = torch.randn(*x.shape[:-1], device=x.device, generator=generator) * self.config.std / 0.8
            return x + scale.unsqueeze(-1) * noise(x.shape)
        raise ValueError(f"unknown dist_type {dist_type!r}; use 'fixed' or 'gaussian'")

    # ---- speech recognition ------------------------------------------------------------------

    def transcribe(self, audio_16k: list[torch.Tensor]) -> list[str]:
        """Transcripts of 16 kHz mono clips with the reference's ASR (loaded on first use)."""
        model, processor = self._load_asr()
        device = next(model.parameters()).device
        inputs = processor(
            [a.detach().float().cpu().numpy() for a in audio_16k],
            sampling_rate=ALIGNER_SAMPLE_RATE,
            return_tensors="pt",
        )
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        with torch.no_grad():
            ids = model.generate(**inputs)
        return [finish_transcript(t) for t in processor.batch_decode(ids)]

    def _load_asr(self):
        if self._asr is None:
            from transformers import AutoModelForCTC, AutoProcessor

            hub = dict(self._aligner_source[3]) if self._aligner_source else {}
            hub.pop("revision", None)  # that revision is the codec's
            with torch.random.fork_rng(devices=[]):
                processor = AutoProcessor.from_pretrained(self.asr_model_name, **hub)
                model = AutoModelForCTC.from_pretrained(self.asr_model_name, **hub)
            model.requires_grad_(False).eval()
            self.__dict__["_asr"] = (model, processor)
        model, processor = self._asr
        model.to(self.pos_emb.weight.device)
        return model, processor

    # ---- the whole pipeline ------------------------------------------------------------------

    @torch.no_grad()
    def forward(
        self,
        audio: str | os.PathLike | torch.Tensor | Sequence[str | os.PathLike | torch.Tensor],
        text: str | Sequence[str] | None = None,
        text_tokens: torch.Tensor | Sequence[Sequence[int]] | None = None,
        text_token_len: torch.Tensor | None = None,
        token_positions: torch.Tensor | None = None,
        token_masks: torch.Tensor | None = None,
        audio_length: torch.Tensor | Sequence[int] | None = None,
        sample_rate: int = SAMPLE_RATE,
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> EncoderOutput:
        """Encode voice prompt(s).

        ``audio``: a file path (its own sample rate is used), a 1-D tensor, a 2-D tensor read as
        (channels, samples) of one clip and mixed to mono, or a list of these (a batch). A 2-D
        tensor whose rows match ``audio_length`` one to one is instead a reference-style padded
        (batch, samples) tensor. ``audio_length`` counts valid samples at the input rate. Audio
        at any rate is resampled to 24 kHz for the encoder and 16 kHz for the aligner.

        ``text`` is the transcript (one per clip; normalised, then tokenized with
        :attr:`tokenizer`); without ``text`` and ``text_tokens`` the clip is transcribed.
        ``token_positions`` (1-based) / ``token_masks`` skip the aligner. ``sample`` adds the
        training noise to the marked frames (as the reference does by default), drawn from
        ``generator`` if given, else from torch's global RNG.

        Audio and transcripts are validated before any model runs: silent, non-finite or
        too-short audio raises :class:`~tadastream.audio.AudioError`; an empty transcript or one
        that cannot fit the clip raises :class:`~tadastream.codec.aligner.TranscriptError`.
        """
        clips = _collect_audio(audio, audio_length, sample_rate)
        for clip, rate in clips:
            check_prompt_audio(clip, rate)
        batch = len(clips)
        texts = _collect_text(text, batch)
        tokens, tokens_tensor = _collect_tokens(text_tokens, text_token_len, batch)
        alignment = _collect_alignment(token_positions, token_masks, batch)

        needs_16k = alignment is None or (texts is None and tokens is None)
        clips_16k = _aligner_clips(clips) if needs_16k else []
        texts, tokens = self._transcripts_and_tokens(texts, tokens, clips_16k, alignment is not None)
        if tokens_tensor is not None and text_token_len is None and batch > 1 and alignment is None:
            tokens = self._without_batch_padding(tokens)
        if alignment is None:
            self._check_transcripts_fit(tokens, clips_16k)

        encoded = [
            self._align_and_encode(clip, rate, i, clips_16k, tokens, alignment) for i, (clip, rate) in enumerate(clips)
        ]
        return self._pad_and_pack(encoded, texts, tokens, tokens_tensor, sample, generator)

    # ---- forward's phases: transcripts and tokens, align and encode per clip, pad and pack -----

    def _transcripts_and_tokens(
        self,
        texts: list[str] | None,
        tokens: list[torch.Tensor] | None,
        clips_16k: list[torch.Tensor],
        aligned: bool,
    ) -> tuple[list[str], list[torch.Tensor]]:
        """A transcript and its token ids per clip, each from whichever was given: the clips are
        transcribed when neither was, the transcripts normalised and tokenized when no tokens were,
        the tokens decoded when no transcripts were (to "" when ``aligned`` and no tokenizer is at hand)."""
        if texts is None and tokens is None:
            texts = self.transcribe(clips_16k)
        if tokens is None:
            texts = [normalize_text(t) for t in texts]
            for t in texts:
                if not t.strip():
                    raise TranscriptError("the transcript is empty after normalization; give the words spoken")
            tokenizer = self.tokenizer
            tokens = [torch.tensor(tokenizer.encode(t, add_special_tokens=False), dtype=torch.long) for t in texts]
        elif texts is None:
            tokenizer = self._tokenizer_at_hand() if aligned else self.tokenizer
            texts = [tokenizer.decode(t.tolist()) if tokenizer is not None else "" for t in tokens]
        return texts, tokens

    def _without_batch_padding(self, tokens: list[torch.Tensor]) -> list[torch.Tensor]:
        """The rows of a reference-style padded batch of token ids without their eos padding."""
        eos = getattr(self.tokenizer, "eos_token_id", None)
        return [t[t != eos] for t in tokens]

    def _check_transcripts_fit(self, tokens: list[torch.Tensor], clips_16k: list[torch.Tensor]) -> None:
        """Every transcript must fit its clip before any network runs."""
        for toks, clip_16k in zip(tokens, clips_16k):
            check_fits(toks.numel(), self.aligner.logit_frames(clip_16k.numel()))

    def _align_and_encode(
        self,
        clip: torch.Tensor,
        rate: int,
        index: int,
        clips_16k: list[torch.Tensor],
        tokens: list[torch.Tensor],
        alignment: list[tuple[torch.Tensor, torch.Tensor]] | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Clip ``index`` at 24 kHz, its token positions (aligned here unless given in ``alignment``),
        its hidden frames and their marks, all on the encoder's device."""
        device = self.pos_emb.weight.device
        clip_24k = resample(clip, rate, SAMPLE_RATE).to(device)
        if alignment is None:
            frames = math.ceil(clip.shape[-1] * FRAME_RATE / rate)
            pos, mask, _ = self.aligner.align(clips_16k[index], tokens[index], frames)
        else:
            pos, mask = alignment[index]
        enc, mark = self.encode_frames(clip_24k.unsqueeze(0), mask.unsqueeze(0))
        return clip_24k, pos.to(device), enc[0], mark[0]

    def _pad_and_pack(
        self,
        encoded: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
        texts: list[str],
        tokens: list[torch.Tensor],
        tokens_tensor: torch.Tensor | None,
        sample: bool,
        generator: torch.Generator | None,
    ) -> EncoderOutput:
        """The clips' audio, positions, frames and marks (from :meth:`_align_and_encode`) padded into
        a batch, the vector of each token picked from its frame, all packed into an EncoderOutput."""
        device = self.pos_emb.weight.device
        audios, positions, hidden, marks = (list(column) for column in zip(*encoded))
        audio_len = torch.tensor([a.numel() for a in audios], dtype=torch.long, device=device)
        audio_batch = nn.utils.rnn.pad_sequence(audios, batch_first=True)
        frames = nn.utils.rnn.pad_sequence(hidden, batch_first=True)
        masks = nn.utils.rnn.pad_sequence(marks, batch_first=True)
        token_positions = nn.utils.rnn.pad_sequence(positions, batch_first=True).long()
        frames, non_sampled, token_values = self._token_values(frames, masks, token_positions, sample, generator)
        return EncoderOutput(
            audio=audio_batch,
            audio_len=audio_len,
            text=list(texts),
            token_positions=token_positions,
            token_values=token_values,
            sample_rate=SAMPLE_RATE,
            text_tokens=self._padded_tokens(tokens, tokens_tensor),
            text_tokens_len=torch.tensor([t.numel() for t in tokens], dtype=torch.long, device=device),
            encoded_expanded=frames,
            non_sampled_encoded_expanded=non_sampled,
            token_masks=masks,
            language=self.language,
        )

    def _token_values(
        self,
        frames: torch.Tensor,
        masks: torch.Tensor,
        token_positions: torch.Tensor,
        sample: bool,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(marked frames, the same before the training noise, each token's normalised vector): frames
        that mark no token are zeroed; ``sample`` adds the noise to the marked ones."""
        frames = torch.where(masks.unsqueeze(-1) == 0, torch.zeros_like(frames), frames)
        non_sampled = frames
        if sample and self.config.std > 0.0:
            frames = torch.where(masks.unsqueeze(-1) == 0, frames, self.sample(frames, generator=generator))
        index = (token_positions - 1).clamp(min=0).unsqueeze(-1).expand(-1, -1, frames.shape[-1])
        token_values = (torch.gather(frames, 1, index) - self.config.acoustic_mean) / self.config.acoustic_std
        return frames, non_sampled, token_values

    def _padded_tokens(self, tokens: list[torch.Tensor], tokens_tensor: torch.Tensor | None) -> torch.Tensor:
        """The caller's padded token tensor as given, else the token rows padded with eos (0 without one)."""
        device = self.pos_emb.weight.device
        if tokens_tensor is not None:
            return tokens_tensor.to(device)
        pad_id = getattr(self._tokenizer_at_hand(), "eos_token_id", None) or 0
        return nn.utils.rnn.pad_sequence(tokens, batch_first=True, padding_value=pad_id).to(device)


# --------------------------------------------------------------------------------------------
# input normalisation (all checks happen here, before any network runs)


def _aligner_clips(clips: list[tuple[torch.Tensor, int]]) -> list[torch.Tensor]:
    """The clips at the aligner's 16 kHz, straight from their input rate (one resampling, not 24 kHz then 16 kHz)."""
    return [resample(clip, rate, ALIGNER_SAMPLE_RATE) for clip, rate in clips]


def _collect_audio(audio: Any, audio_length: Any, sample_rate: int) -> list[tuple[torch.Tensor, int]]:
    """(mono 1-D float tensor, its sample rate) per clip."""
    lengths = None if audio_length is None else [int(n) for n in torch.as_tensor(audio_length).reshape(-1).tolist()]
    if isinstance(audio, str | os.PathLike | torch.Tensor) or hasattr(audio, "__array__"):
        if (
            isinstance(audio, torch.Tensor)
            and audio.dim() == 2
            and lengths is not None
            and len(lengths) == audio.shape[0] > 1
        ):
            items = list(audio)  # reference-style padded (batch, samples)
        else:
            items = [audio]
    elif isinstance(audio, Sequence) and len(audio) > 0:
        items = list(audio)
    else:
        raise AudioError("audio must be a file path, a tensor, or a non-empty list of them")
    if lengths is not None and len(lengths) != len(items):
        raise AudioError(f"audio_length has {len(lengths)} entries for {len(items)} clips")
    clips = []
    for i, item in enumerate(items):
        if isinstance(item, str | os.PathLike):
            data, rate = load_audio(item)
        else:
            data, rate = torch.as_tensor(item), sample_rate
            if data.dim() not in (1, 2):
                raise AudioError(f"a clip must be 1-D or (channels, samples), got shape {tuple(data.shape)}")
        clip = to_mono(data)
        if lengths is not None:
            clip = clip[: lengths[i]]
        clips.append((clip, rate))
    return clips


def _collect_text(text: Any, batch: int) -> list[str] | None:
    if text is None:
        return None
    texts = [text] if isinstance(text, str) else list(text)
    if len(texts) != batch:
        raise TranscriptError(f"{len(texts)} transcripts for {batch} clips; give one per clip")
    for t in texts:
        if not isinstance(t, str):
            raise TranscriptError(f"a transcript must be a string, got {type(t).__name__}")
        if not t.strip():
            raise TranscriptError("the transcript is empty; give the words spoken in the prompt audio")
    return texts


def _collect_tokens(text_tokens: Any, lengths: Any, batch: int) -> tuple[list[torch.Tensor] | None, Any]:
    """Per-clip token tensors, and the caller's padded tensor (kept as given) if there was one."""
    if text_tokens is None:
        return None, None
    if isinstance(text_tokens, torch.Tensor):
        table = text_tokens.reshape(1, -1) if text_tokens.dim() == 1 else text_tokens.reshape(text_tokens.shape[0], -1)
        rows = list(table.long())
        kept = table
    else:
        rows = [torch.as_tensor(list(t), dtype=torch.long) for t in text_tokens]
        kept = None
    if len(rows) != batch:
        raise TranscriptError(f"{len(rows)} token sequences for {batch} clips; give one per clip")
    if lengths is not None:
        counts = [int(n) for n in torch.as_tensor(lengths).reshape(-1).tolist()]
        if len(counts) != batch:
            raise TranscriptError(f"text_token_len has {len(counts)} entries for {batch} clips")
        rows = [row[:n] for row, n in zip(rows, counts)]
    if any(row.numel() == 0 for row in rows):
        raise TranscriptError("the transcript has no tokens; give the words spoken in the prompt audio")
    return [row.cpu() for row in rows], kept


def _collect_alignment(positions: Any, masks: Any, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """(1-based positions, 0/1 frame marks) per clip from whichever of the two was given."""
    if positions is None and masks is None:
        return None
    if positions is not None:
        positions = torch.as_tensor(positions).long()
        positions = positions.reshape(1, -1) if positions.dim() == 1 else positions
    if masks is not None:
        masks = torch.as_tensor(masks)
        masks = (masks.reshape(1, -1) if masks.dim() == 1 else masks) != 0
    if positions is None:
        positions = nn.utils.rnn.pad_sequence([row.nonzero().reshape(-1) + 1 for row in masks], batch_first=True)
    if masks is None:
        width = int(positions.max()) if positions.numel() else 0
        masks = torch.zeros(positions.shape[0], width, dtype=torch.bool, device=positions.device)
        for row, pos in zip(masks, positions):
            valid = pos[pos > 0]
            row[valid - 1] = True
    if positions.shape[0] != batch or masks.shape[0] != batch:
        raise ValueError(f"token_positions / token_masks have {positions.shape[0]} rows for {batch} clips")
    return [(p, m.long()) for p, m in zip(positions, masks)]
