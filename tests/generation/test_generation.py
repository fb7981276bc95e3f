"""Non-streaming generation, loading and input validation on the tiny demo model."""

import pytest
import torch

from tadastream import CheckpointError, GenerationInputError, InferenceOptions, TadaForCausalLM
from tadastream.codec.decoder import Decoder
from tadastream.demo import DEMO_VOICE_TEXT, demo_tokenizer
from tadastream.drivers import generate_steps, generate_utterances
from tadastream.generation import (
    MIN_LEADING_TRIM_FRAMES,
    GenerationOutput,
    SpeechRequest,
    StepOutput,
    StreamRng,
    SyncTokGenerationOutput,
    decode_audio,
    plan_generation,
)
from tadastream.generation.outputs import PER_TEXT_LISTS, PER_TEXT_TENSORS
from tadastream.text import tokenize_joint

TEXT = "Please call Stella. Ask her to bring these things."


def test_generate_returns_audio_and_reference_fields(demo_model, demo_voice):
    torch.manual_seed(0)
    out = demo_model.generate(prompt=demo_voice, text=TEXT)
    assert isinstance(out, GenerationOutput)
    audio = out.audio[0]
    assert audio.dim() == 1 and audio.dtype == torch.float32 and audio.numel() > 24000 * 0.5
    assert out.time_before.shape[0] == 1 and out.input_text_ids.shape[0] == 1
    assert "stella" in out.input_str[0] and out.text == ["Please call stella. Ask her to bring these things."]
    # frames -> samples: 480 per frame, minus the decoder's 6, minus the leading trim
    frames = int(out.time_before[0, :-1].clamp(min=1).sum() + out.time_before[0, -1])
    trim = max(int(out.time_before[0, 0]), MIN_LEADING_TRIM_FRAMES)
    assert audio.numel() == 480 * frames - 6 - 480 * trim
    torch.manual_seed(0)
    assert torch.equal(demo_model.generate(prompt=demo_voice, text=TEXT).audio[0], audio)


def test_step_generator_yields_one_step_per_frame_then_result(demo_model, demo_voice):
    plan = plan_generation(demo_model, SpeechRequest(TEXT, demo_voice))
    torch.manual_seed(0)
    items = list(generate_steps(demo_model, plan))
    steps, final = items[:-1], items[-1]
    assert isinstance(final, SyncTokGenerationOutput) and all(isinstance(s, StepOutput) for s in steps)
    assert [s.index for s in steps] == list(range(len(steps)))
    assert len(steps) == final.acoustic_features.shape[1] == final.time_before.shape[1] - 1
    predicted = [s for s in steps if s.source == "predicted"]
    assert predicted and all(s.llm_time > 0 and s.flow_time > 0 for s in predicted)


def test_list_of_texts_and_no_prompt(demo_model, demo_voice):
    out = demo_model.generate(prompt=demo_voice, text=["Hello there.", "Five shots."])
    assert len(out.audio) == 2 and all(a.numel() > 0 for a in out.audio)
    alone = demo_model.generate(prompt=None, text="Hello there, no voice.")
    assert alone.audio[0].numel() > 0


def test_a_list_of_texts_gives_every_per_text_field_as_each_text_alone(demo_model, demo_voice):
    texts = ["Hello there.", "Five shots, and then a few more words."]
    out = demo_model.generate(prompt=demo_voice, text=texts, seed=7)
    rng = StreamRng.from_seed(7, demo_model.device)
    plans = [plan_generation(demo_model, SpeechRequest(text, demo_voice)) for text in texts]
    alone = [generate_utterances(demo_model, [plan], [rng.derive(i)])[0] for i, plan in enumerate(plans)]
    for name in set(PER_TEXT_LISTS) - {"audio"}:
        assert getattr(out, name) == [item for solo in alone for item in getattr(solo, name)], name
    for got, solo in zip(out.audio, alone):
        assert torch.equal(got, solo.audio[0])
    assert [len(w) for w in out.words] == [len(tokens) for tokens in (t.split() for t in texts)]
    for name in PER_TEXT_TENSORS:
        merged = getattr(out, name)
        assert merged.shape[0] == len(texts), name
        for row, solo in enumerate(alone):
            own = getattr(solo, name)[0]
            assert torch.equal(merged[row, : own.shape[0]], own), name
            assert not merged[row, own.shape[0] :].any(), f"{name}: zeros after text {row}'s end"
    assert out.llm_time.shape == out.diffusion_time.shape == (len(texts),)
    assert out.total_time is None, "a stream's timings do not describe a batch"


def test_extra_steps_continue_after_the_text(demo_model, demo_voice):
    torch.manual_seed(0)
    base = demo_model.generate(prompt=demo_voice, text="Hello there.")
    torch.manual_seed(0)
    more = demo_model.generate(prompt=demo_voice, text="Hello there.", num_extra_steps=4)
    assert more.output_text_ids.shape[1] > base.output_text_ids.shape[1] - 5


@pytest.mark.parametrize("speed", [0.25, 0.5, 0.8, 2.0, 4.0])
def test_every_speed_scales_the_durations_even_past_the_models_range(demo_model, demo_voice, speed):
    """Slowed speech forces durations the time embeddings do not know (the demo model knows 0-15
    frames): the model sees the longest it knows, the audio keeps the real, longer durations."""
    text = "Hello there, how are you doing today?"
    base = demo_model.generate(prompt=demo_voice, text=text, seed=1)
    out = demo_model.generate(
        prompt=demo_voice, text=text, seed=1, inference_options=InferenceOptions(speed_up_factor=speed)
    )
    expected = (base.time_before.float() / speed).round().long()
    assert torch.equal(out.time_before[:, 1:-1], expected[:, 1:-1])  # the first pass is the plain run
    if speed < 1:
        assert int(out.time_before.max()) > demo_model.config.num_time_classes - 1 or speed == 0.8
    ratio = out.audio[0].numel() / base.audio[0].numel()
    assert ratio == pytest.approx(1 / speed, rel=0.3)
    streamed = demo_model.generate(
        prompt=demo_voice, text=text, seed=1, stream=True, inference_options=InferenceOptions(speed_up_factor=speed)
    )
    audio = torch.cat([c for c, _ in streamed])
    assert audio.shape == out.audio[0].shape and (audio - out.audio[0]).abs().max() <= 1e-4


def test_leading_trim_is_at_least_five_frames(demo_model):
    vectors = torch.randn(4, demo_model.config.acoustic_dim)
    short = decode_audio(demo_model, vectors, torch.tensor([2, 3, 3, 3, 2]))
    frames = 2 + 3 + 3 + 3 + 2  # (2-1) zeros + vector, then 3 per token, then 2 trailing
    assert short.numel() == 480 * frames - 6 - 480 * MIN_LEADING_TRIM_FRAMES
    long = decode_audio(demo_model, vectors, torch.tensor([8, 3, 3, 3, 2]))
    assert long.numel() == 480 * (8 + 9 + 2) - 6 - 480 * 8


def test_joint_tokenization_keeps_characters_at_the_seam():
    tok = demo_tokenizer()
    prompt_ids = tok.encode(DEMO_VOICE_TEXT, add_special_tokens=False)
    ids = tokenize_joint(tok, DEMO_VOICE_TEXT, "Hello world")
    assert ids[: len(prompt_ids)] == prompt_ids
    assert tok.decode(ids[len(prompt_ids) :]) == " Hello world"
    assert tok.decode(ids) == DEMO_VOICE_TEXT + " Hello world"
    # A transcript ending in whitespace cannot be re-tokenized jointly: the prompt ids are kept.
    odd = tokenize_joint(tok, DEMO_VOICE_TEXT + "  ", "Hi", prompt_ids)
    assert odd[: len(prompt_ids)] == prompt_ids


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(text=""), "empty"),
        (dict(text="  \n "), "empty"),
        (dict(text="Hi.", inference_options=InferenceOptions(time_schedule="fast")), "time_schedule"),
        (dict(text="Hi.", inference_options=InferenceOptions(scorer="best")), "scorer"),
        (dict(text="Hi.", inference_options=InferenceOptions(num_flow_matching_steps=0)), "at least 1"),
        (dict(text="Hi.", inference_options=InferenceOptions(speed_up_factor=-1.0)), "speed_up_factor"),
        (dict(text="Hi.", num_extra_steps=-1), ">= 0"),
        (dict(text="word " * 5000, long_form=False), "too long"),
        (dict(text="Hi \ud800."), "unpaired UTF-16 surrogate"),
        (dict(text="Hi.", inference_options=InferenceOptions(text_temperature="hot")), "must be a number"),
        (dict(text="Hi.", inference_options=InferenceOptions(noise_temperature=1e308)), "outside"),
        (dict(text="Hi.", inference_options=InferenceOptions(acoustic_cfg_scale=float("nan"))), "outside"),
        (dict(text="Hi.", inference_options=InferenceOptions(text_do_sample="no")), "true or false"),
        (dict(text="Hi.", inference_options=InferenceOptions(text_top_k=2.5)), "must be an integer"),
    ],
)
def test_bad_input_is_one_clear_error(demo_model, demo_voice, kwargs, match):
    with pytest.raises(GenerationInputError, match=match):
        demo_model.generate(prompt=demo_voice, **kwargs)


def test_mismatched_prompt_is_rejected(demo_model, demo_voice):
    import dataclasses

    bad = dataclasses.replace(demo_voice, token_values=torch.zeros(1, 3, 7))
    with pytest.raises(GenerationInputError, match="token_values"):
        demo_model.generate(prompt=bad, text="Hi.")


def test_mixed_dtypes_are_converted(demo_model, demo_voice):
    import dataclasses

    torch.manual_seed(3)
    ref = demo_model.generate(prompt=demo_voice, text="Hello.").audio[0]
    as64 = dataclasses.replace(demo_voice, token_values=demo_voice.token_values.double())
    torch.manual_seed(3)
    assert torch.allclose(demo_model.generate(prompt=as64, text="Hello.").audio[0], ref, atol=1e-5)
    assert demo_voice.token_values.dtype == torch.float32  # the caller's prompt is not modified


def test_bf16_model_generates(demo_voice):
    from tadastream.demo import build_demo_model

    model = build_demo_model().to(torch.bfloat16)
    model.decoder.float()
    out = model.generate(prompt=demo_voice, text="Hello there.")
    assert torch.isfinite(out.audio[0]).all() and out.audio[0].numel() > 0


@pytest.mark.parametrize("native", [True, False])
def test_bf16_layout_keeps_the_decoder_fp32_where_the_cpu_emulates_bf16(demo_voice, monkeypatch, native):
    from tadastream import weights as weights_module
    from tadastream.demo import build_demo_model

    monkeypatch.setattr(weights_module, "native_cpu_kernels", lambda dtype: native)
    model = build_demo_model().to(torch.bfloat16).optimize_for_inference()
    assert model.dtype == torch.bfloat16
    assert model.decoder.decoder_proj.weight.dtype == (torch.bfloat16 if native else torch.float32)
    out = model.generate(prompt=demo_voice, text="Hello there.", seed=3)
    assert out.audio[0].dtype == model.decoder.decoder_proj.weight.dtype
    assert torch.isfinite(out.audio[0].float()).all() and out.audio[0].numel() > 0


def test_save_and_load_llm_with_codec_and_tokenizer(tmp_path, demo_model, demo_voice):
    demo_model.save_pretrained(tmp_path / "llm")
    demo_model.decoder.save_pretrained(tmp_path / "codec" / "decoder")
    loaded = TadaForCausalLM.from_pretrained(tmp_path / "llm", codec=tmp_path / "codec", optimize=False)
    assert isinstance(loaded.decoder, Decoder)
    assert loaded.tokenizer.encode("Hello") == demo_model.tokenizer.encode("Hello")
    torch.manual_seed(5)
    a = demo_model.generate(prompt=demo_voice, text="Hello there.").audio[0]
    torch.manual_seed(5)
    b = loaded.generate(prompt=demo_voice, text="Hello there.").audio[0]
    assert torch.equal(a, b)
    # the default load is laid out for inference: same audio to rounding
    fast = TadaForCausalLM.from_pretrained(tmp_path / "llm", codec=tmp_path / "codec")
    assert fast.inference_layout is not None and loaded.inference_layout is None
    torch.manual_seed(5)
    c = fast.generate(prompt=demo_voice, text="Hello there.").audio[0]
    assert c.shape == a.shape and (c - a).abs().max() < 1e-4
    int8 = TadaForCausalLM.from_pretrained(
        tmp_path / "llm", codec=tmp_path / "codec", quantize="int8", torch_dtype="bfloat16"
    )
    assert int8.inference_layout == "int8" and int8.dtype == torch.bfloat16


def test_quantize_arguments_fail_before_loading(tmp_path):
    with pytest.raises(ValueError, match="quantize needs optimize=True"):
        TadaForCausalLM.from_pretrained(tmp_path / "missing", quantize="int8", optimize=False)
    with pytest.raises(ValueError, match="use one of"):
        TadaForCausalLM.from_pretrained(tmp_path / "missing", quantize="int4")
    with pytest.raises(ValueError, match="torch_dtype='bfloat16'"):  # fp32 activations: a slow kernel
        TadaForCausalLM.from_pretrained(tmp_path / "missing", quantize="int8")


def test_llm_checkpoint_errors_name_the_key(tmp_path, demo_model):
    from safetensors.torch import load_file, save_file

    demo_model.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    state["_decoder.decoder_proj.weight"] = torch.zeros(2, 2)  # reference leftovers are ignored
    save_file(state, str(tmp_path / "model.safetensors"))
    TadaForCausalLM.from_pretrained(tmp_path, codec=None)
    del state["acoustic_proj.weight"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="acoustic_proj.weight"):
        TadaForCausalLM.from_pretrained(tmp_path, codec=None)


def test_hub_id_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(CheckpointError, match="local"):
        TadaForCausalLM.from_pretrained("HumeAI/tada-1b", local_files_only=True)
    with pytest.raises(CheckpointError, match="neither an existing directory"):
        TadaForCausalLM.from_pretrained("./no/such/dir")


def test_flow_head_runs_only_where_its_output_is_used(demo_model):
    """Without a voice, the first shift_acoustic steps make no frame and the next ones take frame
    and duration from the (empty) prompt: their ODE is skipped. Their noise is still drawn, so
    later frames follow the reference's random stream (test_parity checks the audio)."""
    from tadastream.generation import SpeechRequest, StepOutput, plan_generation

    calls: list[int] = []
    plan = plan_generation(demo_model, SpeechRequest("Hello there, friend."))
    hook = demo_model.prediction_head.register_forward_hook(lambda *_: calls.append(1))
    try:
        torch.manual_seed(0)
        frames = [s.index for s in generate_steps(demo_model, plan) if isinstance(s, StepOutput)]
    finally:
        hook.remove()
    n_feat, n_time = plan.prompt_features.shape[1], plan.prompt_time_before.shape[1]
    solved = [k for k in frames if k >= n_feat or k >= n_time - 1]
    assert 0 < len(solved) < len(frames)
    assert len(calls) == len(solved) * InferenceOptions().num_flow_matching_steps
