"""The embedded demo model: the whole pipeline with no download.

A tiny TADA (LLM, flow head, codec decoder) with deterministic random weights, the tiny BPE
tokenizer shipped in ``assets/``, and a default voice; and a tiny codec encoder with its CTC
aligner (:func:`build_demo_encoder`), so voice cloning runs offline too. Its audio is noise-like
because the weights are random; it exists to show and test the machinery, not to speak.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .codec.decoder import Decoder
from .config import DecoderConfig, tada_config
from .model import TadaForCausalLM
from .scripts import LANGUAGES

TOKENIZER_DIR = Path(__file__).parent / "assets" / "tiny_tokenizer"
DEMO_VOICE_TEXT = (
    "The examination and testimony of the experts, enabled the commission to conclude that five shots may "
    "have been fired."
)


def demo_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))


def demo_configs(hidden: int = 64, layers: int = 2, acoustic_dim: int = 32, time_bits: int = 4):
    tok_len = len(demo_tokenizer())
    llm = tada_config(
        vocab_size=-(-tok_len // 64) * 64,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        tie_word_embeddings=True,
        rope_theta=500000.0,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 1024,
        },
        acoustic_dim=acoustic_dim,
        num_time_classes=2**time_bits,
        shift_acoustic=5,
        head_layers=2,
        head_ffn_ratio=2.0,
        bos_token_id=None,
        eos_token_id=None,
        languages=list(LANGUAGES),  # random weights stand in for either checkpoint: no script warnings
    )
    codec = DecoderConfig(
        embed_dim=acoustic_dim,
        hidden_dim=64,
        num_attn_layers=2,
        num_attn_heads=4,
        attn_dim_feedforward=128,
        wav_decoder_channels=64,
    )
    return llm, codec


def build_demo_model(seed: int = 0, **sizes) -> TadaForCausalLM:
    """Deterministic tiny model (same seed, same weights on every machine)."""
    llm_config, codec_config = demo_configs(**sizes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        decoder = Decoder(codec_config)
        for name, p in decoder.named_parameters():
            if name.endswith("alpha"):
                torch.nn.init.uniform_(p, 0.5, 1.5)
        model = TadaForCausalLM(llm_config, decoder=decoder.eval(), tokenizer=demo_tokenizer())
        with torch.no_grad():
            for p in model.prediction_head.parameters():
                torch.nn.init.normal_(p, std=0.5 / max(p.shape[-1], 1) ** 0.5)
            torch.nn.init.normal_(model.acoustic_mask_emb.weight, std=0.02)
    model._codec_source = None
    return model.eval()


def demo_voice(model: TadaForCausalLM, seed: int = 0):
    """A default prompt: the sample transcript aligned at a plausible speaking rate."""
    from .codec.encoder import EncoderOutput

    tok = model.tokenizer
    ids = tok.encode(DEMO_VOICE_TEXT, add_special_tokens=False)
    gen = torch.Generator().manual_seed(seed + 1)
    gaps = torch.randint(3, 8, (len(ids),), generator=gen)
    positions = torch.cumsum(gaps, 0).unsqueeze(0)
    frames = int(positions[0, -1]) + 4
    values = torch.randn(1, len(ids), model.config.acoustic_dim, generator=gen)
    return EncoderOutput(
        audio=torch.zeros(1, frames * 480),
        audio_len=torch.tensor([frames * 480.0]),
        text=[DEMO_VOICE_TEXT],
        token_positions=positions,
        token_values=values,
        sample_rate=24000,
        text_tokens=torch.tensor([ids]),
        text_tokens_len=torch.tensor([len(ids)]),
        language="en",
    )


def build_demo_encoder(seed: int = 0):
    """A tiny codec encoder and CTC aligner (deterministic random weights) sized for the demo model.

    ``encoder(audio, text=..., sample_rate=...)`` runs the real cloning path (resampling, the
    waveform CNN, forced alignment of the transcript, sampling) with no download; the voice it
    makes is noise-like, as the demo model's audio is.
    """
    from .codec.aligner import Aligner, wav2vec2_large_config
    from .codec.encoder import Encoder
    from .config import AlignerConfig, EncoderConfig

    tok = demo_tokenizer()
    llm_config, _ = demo_configs()
    encoder_config = EncoderConfig.from_dict(
        {
            "hidden_dim": 32,
            "embed_dim": llm_config.acoustic_dim,
            "num_attn_layers": 1,
            "num_attn_heads": 2,
            "attn_dim_feedforward": 64,
            "wav_encoder_base_channels": 8,  # the reference's CNN starts at 64: 8 keeps a clip quick
        }
    )
    w2v = wav2vec2_large_config(
        len(tok),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=[16] * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = Encoder(encoder_config, tokenizer=tok)
        encoder.aligner = Aligner(AlignerConfig(), tokenizer=tok, wav2vec2_config=w2v).eval()
    return encoder.eval()
