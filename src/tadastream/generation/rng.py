"""The one home of a generation's randomness.

Each stream draws from generators of its own, in the reference's order (per step: acoustic
noise, then duration noise, on the CPU generator; then the text sample on the device's), so a
seed gives the same audio whatever else runs beside it and whichever thread computes it.
Nothing here touches torch's global generators except :meth:`StreamRng.fork_global`, which
reads them so that ``torch.manual_seed(s)`` before a call reproduces the reference.
"""

from __future__ import annotations

import torch

from ..limits import MAX_SEED

__all__ = ["MAX_SEED", "StreamRng"]


class StreamRng:
    """A stream's random generators: ``cpu`` for the flow noise, ``device`` for sampling.

    On a CPU model both are the same generator, as torch's global one is.
    """

    def __init__(self, cpu: torch.Generator, device: torch.Generator):
        self.cpu = cpu
        self.device = device
        # what derive() starts from, however much was drawn since
        self._origin = (cpu.get_state(), None if device is cpu else device.get_state())

    @classmethod
    def from_seed(cls, seed: int, device: torch.device | str = "cpu") -> StreamRng:
        """The generators ``torch.manual_seed(seed)`` would give, without touching the global ones."""
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise ValueError(f"seed must be an integer in [0, {MAX_SEED}], got {seed!r}")
        device = torch.device(device)
        cpu = torch.Generator().manual_seed(seed)
        if device.type == "cpu":
            return cls(cpu, cpu)
        return cls(cpu, torch.Generator(device=device).manual_seed(seed))

    @classmethod
    def fork_global(cls, device: torch.device | str = "cpu") -> StreamRng:
        """Copies of torch's global generators as they are now; the global ones then move on by
        one draw, so the next call (without a new ``manual_seed``) gets different numbers."""
        device = torch.device(device)
        cpu = torch.Generator()
        cpu.set_state(torch.get_rng_state())
        if device.type == "cpu":
            rng = cls(cpu, cpu)
        else:
            dev = torch.Generator(device=device)
            if device.type == "cuda":
                dev.set_state(torch.cuda.get_rng_state(device))
            rng = cls(cpu, dev)
        torch.randint(2, (1,))  # advance the global CPU generator
        return rng

    def derive(self, index: int) -> StreamRng:
        """Generators for the ``index``-th text of a batch (index 0: this one, as created),
        reproducible from this stream's seed or forked state."""
        probe = torch.Generator()
        probe.set_state(self._origin[0])
        if index == 0:
            if self._origin[1] is None:
                return StreamRng(probe, probe)
            device = torch.Generator(device=self.device.device)
            device.set_state(self._origin[1])
            return StreamRng(probe, device)
        base = int(torch.randint(0, 2**62, (1,), generator=probe))
        return StreamRng.from_seed((base + index) % MAX_SEED, self.device.device)

    def flow_noise(self, rows: int, dim: int) -> torch.Tensor:
        """Standard normal noise for ``rows`` flow solves (CPU, float32, as the reference)."""
        return torch.randn(rows, dim, generator=self.cpu)

    def candidate_noise(self, rows: int, dim: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Noise for ranked candidates: drawn on the model's device in its dtype, as the reference."""
        return torch.randn(rows, dim, device=device, dtype=dtype, generator=self.device)

    def sample(self, probs: torch.Tensor) -> torch.Tensor:
        return torch.multinomial(probs, num_samples=1, generator=self.device)
