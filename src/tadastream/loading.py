"""The one way to get a model ready to run, shared by ``tadastream speak``/``demo`` and the server.

Each front end used to load its own way (the demo model's device, dtype and int8 handling drifted
apart); here the source ('demo', a hub id or a folder), device, dtype and quantize are resolved
once, the same for all. Light to import: torch and the model code load on the first call.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .config import DEFAULT_CODEC

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


def load_model(
    source: str | os.PathLike | TadaForCausalLM,
    *,
    codec: str | os.PathLike | None = None,
    tokenizer: Any = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = "auto",
    quantize: str | None = None,
    threads: int | None = None,
) -> tuple[TadaForCausalLM, EncoderOutput | None]:
    """The model laid out for inference, and its default voice (None: only the demo model has one).

    ``source`` is :data:`DEMO`, a hub id or a checkpoint folder; an already loaded model is returned
    as is, so callers that accept either need no branch. ``device`` defaults to
    :func:`default_device`; ``dtype`` "auto" follows :func:`tadastream.hub.run_dtype` (bfloat16 on
    cuda or with ``quantize="int8"``, else float32). ``codec`` (default ``HumeAI/tada-codec``) and
    ``tokenizer`` apply to checkpoints only: the demo model carries its own. ``threads`` sets
    torch's CPU threads first, so loading uses them too. Raises ``CheckpointError`` (a ValueError)
    when a checkpoint cannot be found or read, ValueError when ``quantize`` cannot run here.
    """
    import torch

    if threads:
        torch.set_num_threads(threads)
    if not isinstance(source, str | os.PathLike):
        return source, None
    from .hub import run_dtype

    device = device or default_device()
    run_as = run_dtype(dtype, device, quantize)
    if source == DEMO:
        from .demo import build_demo_model, demo_voice

        model = build_demo_model().to(device=device, dtype=run_as).optimize_for_inference(quantize)
        return model, demo_voice(model)
    from .model import TadaForCausalLM

    model = TadaForCausalLM.from_pretrained(
        source,
        codec=codec or DEFAULT_CODEC,
        tokenizer=tokenizer,
        torch_dtype=run_as,
        device=device,
        quantize=quantize,
    )
    return model, None
