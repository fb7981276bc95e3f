"""Speaker-verification MLP: structure, checkpoints, normalised output."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from tadastream.codec.spkr_verf import AcousticSpkrVerf
from tadastream.config import AcousticSpkrVerfConfig
from tadastream.hub import CheckpointError

TINY = AcousticSpkrVerfConfig(input_dim=32, hidden_dim=16, embed_dim=8, num_layers=3)


def test_keys_match_reference_indices():
    state = AcousticSpkrVerf().state_dict()
    assert sorted({k.rsplit(".", 1)[0] for k in state}) == ["net.0", "net.1", "net.4", "net.5", "net.8"]
    assert state["net.0.weight"].shape == (768, 512)
    assert state["net.8.weight"].shape == (192, 768)


def test_output_is_unit_length_and_similarity():
    torch.manual_seed(0)
    model = AcousticSpkrVerf(TINY).eval()
    x = torch.randn(5, 32)
    emb = model(x)
    assert emb.shape == (5, 8)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(5), atol=1e-6)
    assert torch.allclose(model.similarity(emb[0], emb[0]), torch.ones(1), atol=1e-6)
    assert model.similarity(emb, emb[:1]).shape == (5,)
    assert model(x[0]).shape == (8,)


def test_round_trip_from_codec_folder(tmp_path):
    torch.manual_seed(0)
    model = AcousticSpkrVerf(TINY).eval()
    model.save_pretrained(tmp_path / "spkr-verf")
    loaded = AcousticSpkrVerf.from_pretrained(tmp_path)  # finds spkr-verf/ by default
    x = torch.randn(3, 32)
    assert torch.equal(model(x), loaded(x))


def test_reference_config_and_bad_keys(tmp_path):
    folder = AcousticSpkrVerf(TINY).save_pretrained(tmp_path / "spkr-verf")
    config = json.loads((folder / "config.json").read_text())
    config.update({"dropout": 0.1, "model_type": "acoustic_spkr_verf", "architectures": ["AcousticSpkrVerf"]})
    (folder / "config.json").write_text(json.dumps(config))
    assert AcousticSpkrVerf.from_pretrained(folder).config.extra["dropout"] == 0.1
    state = load_file(str(folder / "model.safetensors"))
    save_file({k: v for k, v in state.items() if k != "net.5.bias"}, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"net\.5\.bias"):
        AcousticSpkrVerf.from_pretrained(folder)
    state["net.4.weight"] = torch.zeros(16, 15)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"net\.4\.weight"):
        AcousticSpkrVerf.from_pretrained(folder)


@pytest.mark.real_checkpoints
@pytest.mark.skipif(not os.environ.get("TADA_CODEC_DIR"), reason="set TADA_CODEC_DIR to a local tada-codec")
def test_real_checkpoint():
    model = AcousticSpkrVerf.from_pretrained(os.environ["TADA_CODEC_DIR"])
    emb = model(torch.randn(2, 512))
    assert emb.shape == (2, 192)
