"""The weights: Llama 3.2 backbone + acoustic/duration embeddings + flow-matching head, and how they load.

This module sits below the engine and the drivers and imports neither.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Self

import torch
from torch import nn
from transformers import LlamaConfig

from .codec.decoder import Decoder
from .config import DEFAULT_CODEC, DEFAULT_TOKENIZER, checkpoint_languages, num_time_bits, tada_config
from .hub import (
    CheckpointError,
    load_weights,
    read_config,
    read_state_dict,
    resolve_checkpoint,
    resolve_dtype,
    save_checkpoint,
)
from .nn.flow_head import FlowHead
from .nn.kv_cache import CacheSpec, SlotCache
from .nn.linear import WithBias, check_quantize, linear_factory, native_cpu_kernels
from .nn.llama import LlamaBackbone, Segment

# Written by the reference's conversion path: untrained copies of lazily built codec modules.
_UNUSED_CHECKPOINT_KEYS = (r"_decoder\..*", r"_encoder\..*", r"_acoustic_spkr_verf\..*")


class TadaWeights(nn.Module):
    """The TADA language model's weights and modules: input embedding, the backbone over slot
    caches, ``lm_head``, the flow head, the codec decoder and the tokenizer, with loading and saving.

    Nothing here generates: the engine runs these modules, the drivers run the engine, and
    :class:`~tadastream.model.TadaForCausalLM` (hume-tada's name) adds ``generate`` and ``compile``.
    """

    def __init__(self, config: LlamaConfig, decoder: Decoder | None = None, tokenizer: Any = None):
        super().__init__()
        self.config = config
        self.num_time_bits = num_time_bits(config)
        self.time_dim = 2 * self.num_time_bits
        hidden = config.hidden_size
        self.model = LlamaBackbone(config)
        self.lm_head = nn.Linear(hidden, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        head_dim = config.bottleneck_dim or hidden
        self.prediction_head = FlowHead(
            head_dim, config.acoustic_dim + self.time_dim, config.head_layers, config.head_ffn_ratio
        )
        self.bottleneck_proj = nn.Linear(hidden, config.bottleneck_dim) if config.bottleneck_dim else nn.Identity()
        self.acoustic_proj = nn.Linear(config.acoustic_dim, hidden)
        self.time_start_embed = nn.Embedding(config.num_time_classes, hidden)
        self.time_end_embed = nn.Embedding(config.num_time_classes, hidden)
        self.acoustic_mask_emb = nn.Embedding(2, hidden)
        nn.init.zeros_(self.acoustic_mask_emb.weight)
        self.decoder = decoder
        self._tokenizer = tokenizer
        self._spkr_verf = None
        self._codec_source: Any = DEFAULT_CODEC
        self._hub_kwargs: dict[str, Any] = {}
        self.inference_layout: str | None = None  # set by optimize_for_inference

    # -- components -------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            raise RuntimeError("this model has no tokenizer: pass tokenizer=... to from_pretrained")
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, value) -> None:
        self._tokenizer = value

    @property
    def device(self) -> torch.device:
        return self.time_start_embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.time_start_embed.weight.dtype

    @property
    def languages(self) -> tuple[str, ...]:
        """The languages this checkpoint speaks (:func:`~tadastream.config.checkpoint_languages`)."""
        return checkpoint_languages(self.config)

    def require_decoder(self) -> Decoder:
        if self.decoder is None:
            raise RuntimeError("this model has no codec decoder: pass codec=... to from_pretrained")
        return self.decoder

    def load_acoustic_spkr_verf(self, name_or_path: Any = None, subfolder: str = "spkr-verf"):
        """Load the speaker-verification MLP used by the ``spkr_verification`` scorer."""
        from .codec.spkr_verf import AcousticSpkrVerf

        source = name_or_path or self._codec_source
        if isinstance(source, nn.Module) or source is None:
            raise RuntimeError("no codec location to load spkr-verf from: call load_acoustic_spkr_verf(path)")
        self._spkr_verf = AcousticSpkrVerf.from_pretrained(
            source, subfolder=subfolder, device=self.device, **self._hub_kwargs
        )
        return self._spkr_verf

    @property
    def acoustic_spkr_verf(self):
        return self._spkr_verf

    @torch.no_grad()
    def optimize_for_inference(self, quantize: str | None = None, prepack: bool = True) -> Self:
        """Rebuild the LLM's and the flow head's matmuls for fast decoding; one-way, in place.

        Fuses matmuls that read the same input (gate+up, the head's 7 adaLN projections) and,
        on CPU, prepacks weights for oneDNN (same dtype, same results to rounding); with
        ``quantize="int8"`` stores int8 weights with per-channel scales instead (``"w8a8"``: the same
        weights, multiplied by activations quantized per row to int8, in float32, ``lm_head``
        included; half the bytes, a small deviation). The head's adaLN projections run on all ODE
        steps' rows at once: with ``"int8"`` they keep the model's dtype (its kernel is made for
        1-4 rows), with ``"w8a8"`` they are quantized too (fbgemm is 2x faster than float32
        there, bench/bench_matmul.py). Call it after moving the model to its final device and
        dtype; the optimised model cannot be saved or moved. ``prepack=False`` keeps plain weights
        where oneDNN's prepacked ones would go: torch.compile's inductor packs them itself and
        cannot trace prepacked ones (what :meth:`compile` needs on CPU).
        """
        if self.inference_layout is not None:
            raise RuntimeError(f"this model is already optimised ({self.inference_layout})")
        make = linear_factory(self.device, self.dtype, quantize, prepack)
        batched = make if quantize == "w8a8" else linear_factory(self.device, self.dtype, prepack=prepack)
        self.prediction_head.prepare_for_inference(make, make_batched=batched)
        self.model.fuse(make)
        # every input row reads it: in the layout, its numbers do not depend on the row count either
        self.acoustic_proj = WithBias(make(self.acoustic_proj.weight), self.acoustic_proj.bias)
        if quantize == "w8a8":
            # Logits are needed once an utterance, but that call read the float32 table through
            # ATen's unpacked path (0.5 s at TADA-1B shapes on a 2-core CPU); an int8 copy takes
            # ~30 ms. The input embedding keeps the float table (a tied weight stays shared there).
            self.lm_head = make(self.lm_head.weight)
        if self.decoder is not None and self.device.type == "cpu" and not native_cpu_kernels(self.dtype):
            # Emulated half-precision convolutions made decoding most of a bf16 step on such CPUs;
            # the decoder is 0.5 GB in fp32 and its output is fp32.
            self.decoder.float()
        self.inference_layout = quantize or make.__name__
        return self

    def _apply(self, fn, recurse=True):
        # Prepacked weights are opaque oneDNN tensors: .to()/.cuda()/.half() cannot move or cast
        # them, so refuse any change of device or dtype instead of failing later mid-generation.
        if self.inference_layout == "PackedLinear":
            probe = torch.empty(0, dtype=self.dtype, device=self.device)
            moved = fn(probe)
            if moved.device != probe.device or moved.dtype != probe.dtype:
                raise RuntimeError(
                    "this model is laid out for inference on the CPU in its dtype: pass device= and "
                    "torch_dtype= to from_pretrained instead of moving it (or load it with optimize=False)"
                )
        return super()._apply(fn, recurse)

    # -- one step ---------------------------------------------------------------------------
    def embed(self, input_ids, acoustic, acoustic_masks, time_before, time_after) -> torch.Tensor:
        """Input embedding: token + acoustic vector + mask + the two duration embeddings."""
        return (
            self.model.embed_tokens(input_ids)
            + self.acoustic_proj(acoustic.to(self.dtype))
            + self.acoustic_mask_emb(acoustic_masks.long())
            + self.time_start_embed(time_before)
            + self.time_end_embed(time_after)
        )

    def new_cache(self, rows: int, positions: int) -> SlotCache:
        """An empty key/value cache for ``rows`` rows of up to ``positions`` positions (it grows)."""
        return SlotCache(CacheSpec.for_config(self.config, self.dtype, self.device), rows, positions)

    def backbone(self, inputs_embeds: torch.Tensor, cache: SlotCache | None = None, start: int = 0) -> torch.Tensor:
        """Last hidden states of ``inputs_embeds`` (B, T, hidden) at positions ``start..start+T``;
        keys and values go to ``cache`` (a fresh one when None). The engine batches many streams'
        rows into one call of ``self.model`` instead."""
        rows, length = inputs_embeds.shape[:2]
        cache = cache if cache is not None else self.new_cache(rows, start + length)
        cache.reserve(start + length)
        hidden = self.backbone_rows(inputs_embeds.reshape(rows * length, -1), [Segment(cache, rows, start, length)])
        return hidden.view(rows, length, -1)

    def backbone_rows(self, inputs: torch.Tensor, segments: list[Segment]) -> torch.Tensor:
        """Last hidden states of flattened rows (N, hidden) over slot-cache ``segments``: the engine's
        one backbone call for many streams."""
        return self.model(inputs, segments)

    def decode_rows(self, inputs: torch.Tensor, positions, keys, values) -> torch.Tensor:
        """One position per row against a fixed-shape key/value arena: the compiled step's call."""
        return self.model.decode_rows(inputs, positions, keys, values)

    def forward_one_step(
        self,
        input_ids,
        acoustic_features,
        acoustic_masks,
        time_len_before,
        time_len_after,
        cache=None,
        start: int = 0,
        compute_logits: bool = True,
    ):
        """Hidden states (and logits) for a run of positions; mirrors the reference's method
        (``cache``: a :class:`~tadastream.nn.kv_cache.SlotCache` to extend, else a fresh one)."""
        hidden = self.backbone(
            self.embed(input_ids, acoustic_features, acoustic_masks, time_len_before, time_len_after),
            cache,
            start,
        )
        return hidden, (self.lm_head(hidden) if compute_logits else None)

    # -- loading ----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        codec: str | os.PathLike | Decoder | None = DEFAULT_CODEC,
        tokenizer: Any = None,
        torch_dtype: str | torch.dtype | None = torch.float32,
        device: str | torch.device | None = None,
        subfolder: str | None = None,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        optimize: bool = True,
        quantize: str | None = None,
        prepack: bool = True,
        **_ignored: Any,
    ) -> Self:
        """Load the LLM, the codec decoder (``codec``: hub id, directory or a Decoder; None to skip)
        and the tokenizer (object, directory or hub id; default: files in the checkpoint, else the
        config's ``tokenizer_name``, else meta-llama/Llama-3.2-1B).

        ``optimize`` (default) runs :meth:`optimize_for_inference` with ``quantize`` (None or
        "int8") and ``prepack`` (False for a model to :meth:`compile` on CPU); pass ``optimize=False``
        for a model to train or save."""
        if quantize is not None and not optimize:
            raise ValueError("quantize needs optimize=True (quantized weights are an inference layout)")
        check_quantize(quantize, device, resolve_dtype(torch_dtype))
        hub = dict(revision=revision, token=token, cache_dir=cache_dir, local_files_only=local_files_only)
        folder = resolve_checkpoint(name_or_path, subfolder, **hub)
        raw = read_config(folder)
        if raw.get("model_type", "llama") != "llama" or "acoustic_dim" not in raw:
            raise CheckpointError(f"{folder} is not a TADA LLM checkpoint (config.json lacks acoustic_dim)")
        config = tada_config(raw)
        with torch.device("meta"):
            model = cls(config)
        model.to_empty(device="cpu")
        model._init_non_persistent()
        load_weights(
            model,
            read_state_dict(folder),
            ignore=_UNUSED_CHECKPOINT_KEYS,
            optional=(r"lm_head\.weight",) if config.tie_word_embeddings else (),
            source=str(folder),
        )
        if config.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        model._hub_kwargs = {k: v for k, v in hub.items() if k != "revision"}
        model._tokenizer = load_tokenizer(tokenizer, folder, raw, **model._hub_kwargs)
        if isinstance(codec, Decoder):
            model.decoder = codec
        elif codec is not None:
            model.decoder = Decoder.from_pretrained(codec, subfolder="decoder", **model._hub_kwargs)
        model._codec_source = codec
        model.to(device=device, dtype=resolve_dtype(torch_dtype))
        if optimize:
            model.optimize_for_inference(quantize, prepack)
        return model.eval()

    def _init_non_persistent(self) -> None:
        """What checkpoints do not store (rotary frequencies), after building on the meta device."""
        self.model.init_rotary("cpu")

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """config.json + model.safetensors of the LLM (the codec is saved separately)."""
        if self.inference_layout is not None:
            raise RuntimeError("an optimised model cannot be saved: load it with optimize=False to save it")
        decoder, self.decoder = self.decoder, None
        try:
            config = self.config.to_dict()
            config["architectures"] = ["TadaForCausalLM"]  # hume-tada's name: its loaders read it
            path = save_checkpoint(self, config, folder)
        finally:
            self.decoder = decoder
        tok = self._tokenizer
        if tok is not None and hasattr(tok, "save_pretrained"):
            tok.save_pretrained(str(path))
        return path


def load_tokenizer(tokenizer: Any, folder: Path | None = None, config: dict | None = None, **hub: Any):
    """Resolve the tokenizer argument the way ``from_pretrained`` documents it."""
    from transformers import AutoTokenizer

    if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    if tokenizer is None and folder is not None and (folder / "tokenizer.json").is_file():
        tokenizer = folder
    if tokenizer is None:
        tokenizer = (config or {}).get("tokenizer_name") or DEFAULT_TOKENIZER
    try:
        return AutoTokenizer.from_pretrained(str(tokenizer), **{k: v for k, v in hub.items() if v is not None})
    except OSError as exc:
        gated = "meta-llama" in str(tokenizer)
        hint = (
            " (a gated repo: accept the Llama 3.2 licence on the hub and log in, or pass tokenizer=<local dir>)"
            if gated
            else " (pass tokenizer=<local dir with tokenizer.json>)"
        )
        raise CheckpointError(f"could not load tokenizer {tokenizer}{hint}") from exc
