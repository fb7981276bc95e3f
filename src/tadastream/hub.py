"""Find checkpoints (hub id or local directory), read configs and safetensors, check keys.

Hub ids go through huggingface_hub, so its cache, revisions, tokens and offline mode
(``HF_HUB_OFFLINE=1``) all apply; a local directory never touches the network.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint that cannot be found or does not fit the model; the message says what to do."""


_WEIGHT_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]


def resolve_checkpoint(
    name_or_path: str | os.PathLike,
    subfolder: str | None = None,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
) -> Path:
    """Return the local directory holding ``config.json`` for a hub id or a local path."""
    local = Path(name_or_path).expanduser()
    if local.exists():
        folder = local / subfolder if subfolder else local
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"{folder} has no config.json: point at the checkpoint directory itself")
        return folder
    name = str(name_or_path)
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise CheckpointError(
            f"{name!r} is neither an existing directory nor a hub id like 'HumeAI/tada-1b'; check the path"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    patterns = [f"{subfolder}/{p}" for p in _WEIGHT_PATTERNS] if subfolder else _WEIGHT_PATTERNS
    try:
        root = snapshot_download(
            name,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            allow_patterns=patterns,
        )
    except GatedRepoError as exc:
        raise CheckpointError(
            f"{name} is gated: accept its licence on the hub, then log in (`hf auth login`) or pass token=..."
        ) from exc
    except RepositoryNotFoundError as exc:
        raise CheckpointError(f"hub repository {name} was not found (or is private): check the id") from exc
    except RevisionNotFoundError as exc:
        raise CheckpointError(f"revision {revision!r} of {name} does not exist") from exc
    except LocalEntryNotFoundError as exc:
        raise CheckpointError(
            f"{name} is not in the local cache and the hub cannot be reached: download it where there is "
            "network, or pass a local directory"
        ) from exc
    except OSError as exc:  # connection problems surface as OSError subclasses
        raise CheckpointError(f"could not fetch {name} from the hub ({exc}); pass a local directory") from exc
    folder = Path(root) / subfolder if subfolder else Path(root)
    if not (folder / "config.json").is_file():
        where = f"subfolder {subfolder!r} of {name}" if subfolder else name
        raise CheckpointError(f"{where} has no config.json: check the id and subfolder")
    return folder


def read_config(folder: Path) -> dict[str, Any]:
    with open(folder / "config.json", encoding="utf-8") as fh:
        return json.load(fh)


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory: one model.safetensors or an indexed set of shards."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        with open(index, encoding="utf-8") as fh:
            shards = sorted(set(json.load(fh)["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(str(folder / shard)))
        return state
    single = folder / "model.safetensors"
    if single.is_file():
        return load_file(str(single))
    files = sorted(folder.glob("*.safetensors"))
    if len(files) == 1:
        return load_file(str(files[0]))
    raise CheckpointError(f"{folder} holds no model.safetensors (pickle .bin files are not loaded)")


def load_weights(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    *,
    ignore: Iterable[str] = (),
    optional: Iterable[str] = (),
    source: str = "checkpoint",
) -> None:
    """Copy ``state`` into ``module`` strictly: a missing, unexpected or mis-shaped key is an error.

    ``ignore`` are regexes of stored keys we drop on purpose (buffers we recompute, unused
    submodules); ``optional`` are regexes of module keys a checkpoint may leave out (tied weights).
    """
    ignore_re = [re.compile(p) for p in ignore]
    optional_re = [re.compile(p) for p in optional]
    own = module.state_dict()
    kept = {k: v for k, v in state.items() if not any(p.fullmatch(k) for p in ignore_re)}
    unexpected = sorted(set(kept) - set(own))
    if unexpected:
        raise CheckpointError(
            f"{source} has weight {unexpected[0]!r} that this model does not have "
            f"({len(unexpected)} unexpected in all): wrong model type or config?"
        )
    missing = sorted(k for k in set(own) - set(kept) if not any(p.fullmatch(k) for p in optional_re))
    if missing:
        raise CheckpointError(f"{source} lacks weight {missing[0]!r} ({len(missing)} missing in all)")
    for key, value in kept.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise CheckpointError(
                f"{source}: weight {key!r} has shape {tuple(value.shape)}, the config expects {tuple(own[key].shape)}"
            )
    with torch.no_grad():
        for key, value in kept.items():
            own[key].copy_(value)


def save_checkpoint(module: nn.Module, config: dict[str, Any], folder: str | os.PathLike) -> Path:
    """Write config.json + model.safetensors (contiguous, de-duplicated tensors)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state, seen = {}, set()
    for key, value in module.state_dict().items():
        if value.data_ptr() in seen and value.numel():
            continue  # tied weight: stored once
        seen.add(value.data_ptr())
        state[key] = value.detach().contiguous().cpu()
    tmp = folder / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(folder / "model.safetensors")
    with open(folder / "config.json", "w", encoding="utf-8") as fh:
        json.dump(config, fh, indent=2, sort_keys=True, default=str)
    return folder


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
        "auto": None,
    }
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}: use one of float32, bfloat16, float16")
    return names[dtype]


class PretrainedModule(nn.Module):
    """``from_pretrained`` / ``save_pretrained`` for modules built from a dataclass config."""

    config_class: type
    default_subfolder: str | None = None
    ignore_keys: tuple[str, ...] = ()

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        subfolder: str | None = None,
        *,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        torch_dtype: str | torch.dtype | None = torch.float32,
        device: str | torch.device | None = None,
        **_ignored: Any,
    ):
        sub = subfolder if subfolder is not None else cls.default_subfolder
        if (
            sub is not None
            and Path(name_or_path).expanduser().exists()
            and (Path(name_or_path).expanduser() / "config.json").is_file()
            and not (Path(name_or_path).expanduser() / sub).is_dir()
        ):
            sub = None  # the directory is the component itself
        folder = resolve_checkpoint(
            name_or_path,
            sub,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
        )
        model = cls(cls.config_class.from_dict(read_config(folder)))
        load_weights(model, read_state_dict(folder), ignore=cls.ignore_keys, source=str(folder))
        dtype = resolve_dtype(torch_dtype)
        model.to(device=device, dtype=dtype)
        return model.eval()

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        return save_checkpoint(self, self.config.to_dict(), folder)
