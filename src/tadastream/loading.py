"""The one way to get a model ready to run, shared by ``tadastream speak``/``demo`` and the server.

Each front end used to load its own way (the demo model's device, dtype and int8 handling drifted
apart); here the source ('demo', a hub id or a folder), device, dtype and quantize are resolved
once, the same for all. Light to import: torch and the model code load on the first call.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .config import DEFAULT_CODEC, QUANTIZE_ACTIVATIONS

if TYPE_CHECKING:
    import torch

    from .codec.encoder import EncoderOutput
    from .model import TadaForCausalLM

#: The ``--model`` name of the embedded tiny model (random weights, no download).
DEMO = "demo"


def default_device() -> str:
    """The device when none is named: cuda if this machine has it, else cpu."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def choose_dtype(
    dtype: str | torch.dtype | None, device: str | torch.device, quantize: str | None = None
) -> tuple[torch.dtype, str]:
    """(the dtype to run in, why): as asked, or for "auto"/None bfloat16 on CUDA; with a quantized
    layout the activations its kernel takes (``QUANTIZE_ACTIVATIONS``); bfloat16 on a CPU with native
    bfloat16 (avx512_bf16 or AMX: about twice fp32's speed); float32 elsewhere, where bfloat16
    would be emulated and slower."""
    import torch

    from .hub import resolve_dtype
    from .nn.linear import native_cpu_kernels

    resolved = resolve_dtype(dtype)
    if resolved is not None:
        return resolved, f"{str(resolved).removeprefix('torch.')} as asked"
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.bfloat16, "auto: bfloat16 on CUDA"
    if quantize in QUANTIZE_ACTIVATIONS:  # anything else is refused by check_quantize, by name
        runs_in = QUANTIZE_ACTIVATIONS[quantize]
        return getattr(torch, runs_in), f"auto: {runs_in}, the activations {quantize}'s kernel takes"
    if kind == "cpu" and native_cpu_kernels(torch.bfloat16):
        return torch.bfloat16, "auto: bfloat16, which this CPU computes natively (avx512_bf16/AMX)"
    return torch.float32, "auto: float32 (this device has no native bfloat16; emulated, it would be slower)"


def cpu_budget(cgroup_cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """CPUs this process may use: its affinity mask, capped by a container's CPU quota (cgroup v2),
    which torch's own default (the machine's cores) does not see."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open(cgroup_cpu_max) as handle:
            quota, period = handle.read().split()[:2]
        if quota != "max":
            count = min(count, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)


def load_model(
    source: str | os.PathLike | TadaForCausalLM,
    *,
    codec: str | os.PathLike | None = None,
    tokenizer: Any = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = "auto",
    quantize: str | None = None,
    threads: int | None = None,
    compile: bool = False,
    warmup: bool = False,
    max_streams: int = 8,
    max_positions: int | None = None,
) -> tuple[TadaForCausalLM, EncoderOutput | None]:
    """The model laid out for inference, and its default voice (None: only the demo model has one).

    ``source`` is :data:`DEMO`, a hub id or a checkpoint folder; an already loaded model is returned
    as is, so callers that accept either need no branch. ``device`` defaults to
    :func:`default_device`; ``dtype`` "auto" follows :func:`choose_dtype` (bfloat16 on cuda, with
    ``quantize="int8"`` or on a CPU with native bfloat16, else float32). ``codec`` (default
    ``HumeAI/tada-codec``) and ``tokenizer`` apply to checkpoints only: the demo model carries its
    own. ``threads`` sets torch's CPU threads first, so loading uses them too; without it they are
    lowered to the CPUs this process may use (:func:`cpu_budget`) where torch counted more. Raises
    ``CheckpointError`` (a ValueError) when a checkpoint cannot be found or read, ValueError when
    ``quantize`` cannot run here.

    ``compile`` lays the model out for torch.compile and runs :meth:`~tadastream.model.
    TadaForCausalLM.compile` (an engine of ``max_streams`` slots of ``max_positions`` positions,
    CUDA graphs on CUDA); ``warmup`` builds its graphs now, or without ``compile`` gives the model
    an engine of ``max_streams`` slots that has run one step, so the first request waits for neither.
    """
    import torch

    if threads:
        torch.set_num_threads(threads)
    elif torch.get_num_threads() > cpu_budget():  # more threads than CPUs only makes them wait
        torch.set_num_threads(cpu_budget())
    if not isinstance(source, str | os.PathLike):
        return source, None
    if max_positions is not None and max_positions < 1:
        raise ValueError(f"max_positions must be at least 1, got {max_positions}")
    device = device or default_device()
    run_as, _why = choose_dtype(dtype, device, quantize)
    voice = None
    if source == DEMO:
        from .demo import build_demo_model, demo_voice

        model = build_demo_model().to(device=device, dtype=run_as)
        model.optimize_for_inference(quantize, prepack=not compile)
        voice = demo_voice(model)
    else:
        from .model import TadaForCausalLM

        model = TadaForCausalLM.from_pretrained(
            source,
            codec=codec or DEFAULT_CODEC,
            tokenizer=tokenizer,
            torch_dtype=run_as,
            device=device,
            quantize=quantize,
            prepack=not compile,
        )
    prepare_engine(model, compile=compile, warmup=warmup, max_streams=max_streams, max_positions=max_positions)
    return model, voice


def prepare_engine(
    model: TadaForCausalLM, *, compile: bool, warmup: bool, max_streams: int, max_positions: int | None = None
) -> None:
    """Give ``model`` its shared engine when asked: compiled (``compile``), or warmed up (``warmup``)."""
    if compile:
        model.compile(max_streams=max_streams, max_positions=max_positions, warmup=warmup)
    elif warmup:
        from .engine import Engine

        model.hold_engine(Engine(model, max_streams=max_streams).warmup())


def load_model_from_options(opts: Any) -> tuple[TadaForCausalLM, EncoderOutput | None]:
    """:func:`load_model` for parsed options (``--model``, ``--codec``, ``--tokenizer``, ``--device``,
    ``--dtype``, ``--quantize``, ``--threads``, ``--compile``, ``--warmup``, ``--max-positions``,
    ``--max-streams``), as the servers declare them."""
    return load_model(
        opts.model,
        codec=opts.codec,
        tokenizer=opts.tokenizer,
        device=opts.device,
        dtype=opts.dtype,
        quantize=opts.quantize,
        threads=opts.threads,
        compile=getattr(opts, "compile", False),
        warmup=getattr(opts, "warmup", False),
        max_streams=getattr(opts, "max_streams", 8),
        max_positions=getattr(opts, "max_positions", None),
    )
