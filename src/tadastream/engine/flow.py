"""Flow matching: the ODE from noise to an acoustic vector and its durations, for many streams at once.

Every solve's adaLN modulations (they depend on the condition and the ODE time only) are computed
in one matmul for all steps of all solves; each ODE step then makes one head call over the rows
of every solve still running. Solves may differ in step count, time schedule and guidance: the
guided combination and the Euler update run per solve with that solve's own scalars, so each
solve's arithmetic is exactly what it is alone.

:func:`solve_rows` is the same solve with fixed shapes (every row takes the same number of steps,
a row's own step sizes and guidance scales are tensors), for ``torch.compile`` and CUDA graphs;
:func:`pack_solves` lays a tick's solves out for it. Schedules are computed on the host from
Python numbers, so neither path waits for the device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..generation.options import InferenceOptions
from ..generation.requests import FlowSolve
from ..nn.linear import invariant_rows, pad_rows
from ..timecode import decode_time

if TYPE_CHECKING:  # the weights sit below the engine: a type only
    from ..weights import TadaWeights


def scheduled_cfg(scale: float, t: float, schedule: str) -> float:
    if schedule == "constant" or scale == 1.0:
        return scale
    if schedule == "linear":
        return 1.0 + (scale - 1.0) * (1.0 - t)
    return 1.0 + (scale - 1.0) * 0.5 * (1.0 + math.cos(math.pi * t))


def time_grid(num_steps: int, schedule: str, device) -> torch.Tensor:
    if schedule == "cosine":
        return 0.5 * (1 - torch.cos(math.pi * torch.linspace(0, 1, num_steps + 1, device=device)))
    if schedule == "logsnr":
        grid = torch.sigmoid(-torch.linspace(5.0, -5.0, num_steps + 1, device=device) / 2)
        grid[0], grid[-1] = 0.0, 1.0
        return grid
    return torch.linspace(0, 1, num_steps + 1, device=device)


@dataclass
class _Ode:
    """One solve's schedule and state."""

    grid: torch.Tensor
    scales: list[tuple[float, float]]
    x: torch.Tensor
    modulations: torch.Tensor | None = None  # (steps, condition rows, width)

    @property
    def steps(self) -> int:
        return len(self.scales)


def _scales(opts: InferenceOptions, times: list[float]) -> list[tuple[float, float]]:
    """(acoustic, duration) guidance scale at each step's time."""
    return [
        (
            scheduled_cfg(opts.acoustic_cfg_scale, t, opts.cfg_schedule),
            scheduled_cfg(opts.duration_cfg_scale, t, opts.cfg_schedule),
        )
        for t in times
    ]


def _schedule(solve: FlowSolve) -> tuple[_Ode, torch.Tensor]:
    opts = solve.options
    grid = time_grid(opts.num_flow_matching_steps, opts.time_schedule, "cpu")  # read here, no device sync
    scales = _scales(opts, grid[:-1].tolist())
    conds = solve.cond
    if any(a != 1.0 for a, _ in scales):
        conds = torch.cat([conds, solve.neg.to(conds)], dim=0)
    return _Ode(grid.to(solve.cond.device), scales, solve.noise), conds


def solve_flows(model: TadaWeights, solves: Sequence[FlowSolve]) -> list[torch.Tensor]:
    """Final latents, (1, latent) per solve (the best candidate where a solve has several)."""
    head, min_rows = model.prediction_head, invariant_rows(model.device, model.dtype, model.inference_layout)
    odes, t_rows, c_rows = [], [], []
    for solve in solves:
        ode, conds = _schedule(solve)
        odes.append(ode)
        t_rows.append(ode.grid[:-1].to(solve.noise.dtype).repeat_interleave(conds.shape[0]))
        c_rows.append(model.bottleneck_proj(conds).repeat(ode.steps, 1))
    t_all, c_all = torch.cat(t_rows), torch.cat(c_rows)
    modulations = head.modulations(pad_rows(t_all, min_rows), pad_rows(c_all, min_rows))[: t_all.shape[0]]
    offset = 0
    for ode, t in zip(odes, t_rows):
        ode.modulations = modulations[offset : offset + t.shape[0]].unflatten(0, (ode.steps, -1))
        offset += t.shape[0]
    for k in range(max(ode.steps for ode in odes)):
        _euler_step(model, [ode for ode in odes if k < ode.steps], k, min_rows)
    return [_pick(model, solve, ode.x, min_rows) for solve, ode in zip(solves, odes)]


@dataclass
class PackedSolves:
    """A tick's solves laid out for :func:`solve_rows` (``bucket`` rows, ``steps`` steps)."""

    x: torch.Tensor  # (bucket, latent): each solve's noise rows, then zero rows
    t: torch.Tensor  # (steps, head rows): ODE time of every head row (bucket, or 2 * bucket guided)
    cond: torch.Tensor  # (head rows, hidden): the condition rows, then the guidance rows
    dt: torch.Tensor  # (steps, bucket, 1) float32: step sizes, 0 past a row's own steps
    scale: torch.Tensor  # (steps, bucket, latent) float32: guidance scale of every element
    guided: bool
    rows: list[int]  # each solve's rows, in order


def pack_solves(model, solves: Sequence[FlowSolve], bucket: int, pin: bool = False) -> PackedSolves:
    """Lay ``solves`` out in ``bucket`` rows for :func:`solve_rows`. Rows of an unguided solve in a
    guided batch take their own condition as the guidance one, which makes the guidance a no-op."""
    rows = [solve.noise.shape[0] for solve in solves]
    if sum(rows) > bucket:
        raise ValueError(f"{sum(rows)} rows do not fit a bucket of {bucket}")
    device, dtype = solves[0].noise.device, solves[0].noise.dtype
    latent, split = solves[0].noise.shape[1], model.config.acoustic_dim
    plans = []
    for solve in solves:
        opts = solve.options
        grid = time_grid(opts.num_flow_matching_steps, opts.time_schedule, "cpu")
        plans.append((grid, _scales(opts, grid[:-1].tolist())))
    steps = max(len(scales) for _, scales in plans)
    guided = any(a != 1.0 for _, scales in plans for a, _ in scales)
    t = torch.zeros(steps, bucket)
    dt = torch.zeros(steps, bucket, 1)
    scale = torch.ones(steps, bucket, latent)
    offset = 0
    for (grid, scales), n in zip(plans, rows):
        k = len(scales)
        t[:k, offset : offset + n] = grid[:-1, None]
        dt[:k, offset : offset + n, 0] = (grid[1:] - grid[:-1])[:, None]
        for step, (a, d) in enumerate(scales):
            if a != 1.0:
                scale[step, offset : offset + n, :split] = a
                scale[step, offset : offset + n, split:] = d
        offset += n
    x = pad_rows(torch.cat([solve.noise for solve in solves]), bucket)
    cond = [solve.cond for solve in solves]
    if guided:
        t = torch.cat([t, t], dim=1)
        cond += [pad_rows(cond[0][:0], bucket - sum(rows))]
        for solve, (_, scales) in zip(solves, plans):
            uses_guidance = any(a != 1.0 for a, _ in scales)
            cond.append(solve.neg.to(solve.cond) if uses_guidance else solve.cond)
    cond = pad_rows(torch.cat(cond), t.shape[1])

    def to_device(host: torch.Tensor) -> torch.Tensor:
        if pin:  # a pinned copy does not wait for the device's queue
            return host.pin_memory().to(device, non_blocking=True)
        return host.to(device)

    # step sizes and scales stay float32: the eager solve multiplies by them as float scalars
    return PackedSolves(x, to_device(t).to(dtype), cond, to_device(dt), to_device(scale), guided, rows)


def solve_rows(model: TadaWeights, x, t, cond, dt, scale, guided: bool) -> torch.Tensor:
    """Euler solves of ``x`` (rows, latent) with fixed shapes (see :class:`PackedSolves`); returns
    the final latents. The loop has ``t.shape[0]`` steps whatever the values, so it compiles to one
    graph per bucket and step count."""
    head = model.prediction_head
    steps, head_rows = t.shape
    c = model.bottleneck_proj(cond).repeat(steps, 1)
    modulations = head.modulations(t.reshape(-1), c).unflatten(0, (steps, head_rows))
    for k in range(steps):
        out = head(torch.cat([x, x]) if guided else x, modulations=modulations[k])
        if guided:
            pos, neg = out.chunk(2)
            velocity = neg + (scale[k] * (pos - neg)).to(neg.dtype)
        else:
            velocity = out
        # products in float32 rounded to x's dtype, as the eager solve's float scalars give
        x = x + (dt[k] * velocity).to(x.dtype)
    return x


def pick_solves(
    model: TadaWeights, solves: Sequence[FlowSolve], latents: torch.Tensor, rows: Sequence[int]
) -> list[torch.Tensor]:
    """Each solve's result from its rows of ``latents``."""
    min_rows, out, offset = invariant_rows(model.device, model.dtype, model.inference_layout), [], 0
    for solve, n in zip(solves, rows):
        out.append(_pick(model, solve, latents[offset : offset + n], min_rows))
        offset += n
    return out


def _euler_step(model, odes: list[_Ode], k: int, min_rows: int) -> None:
    """Step ``k`` of every given solve: one head call over all their rows."""
    split = model.config.acoustic_dim
    latents, mods = [], []
    for ode in odes:
        rows = ode.x.shape[0]
        latents.append(ode.x)
        mods.append(ode.modulations[k, :rows])
        if ode.scales[k][0] != 1.0:  # the guidance rows: same latent, the negative condition
            latents.append(ode.x)
            mods.append(ode.modulations[k, rows : 2 * rows])
    x, m = torch.cat(latents), torch.cat(mods)
    out = model.prediction_head(pad_rows(x, min_rows), modulations=pad_rows(m, min_rows))
    offset = 0
    for ode in odes:
        rows, (a, d) = ode.x.shape[0], ode.scales[k]
        pos = out[offset : offset + rows]
        offset += rows
        if a != 1.0:
            neg = out[offset : offset + rows]
            offset += rows
            velocity = torch.cat([(neg + a * (pos - neg))[..., :split], (neg + d * (pos - neg))[..., split:]], dim=-1)
        else:
            velocity = pos
        ode.x = ode.x + (ode.grid[k + 1] - ode.grid[k]) * velocity


def _pick(model, solve: FlowSolve, flat: torch.Tensor, min_rows: int) -> torch.Tensor:
    """The solve's result: its one row, or the best of its candidates by the options' scorer."""
    n = solve.candidates
    if n == 1:
        return flat
    opts, cfg = solve.options, model.config
    sv, reference = model.acoustic_spkr_verf, solve.speaker_reference
    if opts.scorer == "spkr_verification" and sv is not None and reference is not None:
        acoustic = (flat[..., : cfg.acoustic_dim] - cfg.acoustic_mean) / cfg.acoustic_std
        emb = sv(acoustic.to(next(sv.parameters()).dtype))
        best = (opts.spkr_verification_weight * (emb @ reference.reshape(-1).to(emb))).argmax()
    elif opts.scorer == "spkr_verification":
        best = 0
    elif opts.scorer == "duration_median":
        bits, times = model.num_time_bits, flat[..., -model.time_dim :]
        dur = decode_time(times[..., :bits], bits) + decode_time(times[..., bits:], bits)
        best = (dur - dur.median()).abs().argmin()
    else:
        best = _reconstruction_scores(model, flat, solve.noise, solve.cond, min_rows).argmax()
    return flat[int(best)].unsqueeze(0)


def _reconstruction_scores(model, samples, noise, cond, min_rows: int, points: int = 3) -> torch.Tensor:
    """How well the head reconstructs each candidate from its own noise (higher is better)."""
    batch = samples.shape[0]
    target = samples - noise
    ts = torch.linspace(0.3, 0.9, points, device=samples.device)
    x_t = torch.cat([(1 - t) * noise + t * samples for t in ts], dim=0)
    t_all = torch.cat([t.expand(batch) for t in ts], dim=0)
    cond_all = model.bottleneck_proj(cond).repeat(points, 1)
    pred = model.prediction_head(*(pad_rows(t, min_rows) for t in (x_t, t_all, cond_all)))[: x_t.shape[0]]
    err = (pred - target.repeat(points, 1))[..., : model.config.acoustic_dim].pow(2).mean(-1)
    return -err.view(points, batch).mean(dim=0)


def solve_flow(model, x: torch.Tensor, cond: torch.Tensor, neg_cond: torch.Tensor, opts: InferenceOptions):
    """One solve from ``x`` (rows, latent); a convenience over :func:`solve_flows`."""
    cond, neg_cond = cond.reshape(x.shape[0], -1), neg_cond.reshape(-1, cond.shape[-1]).expand(x.shape[0], -1)
    return solve_flows(model, [FlowSolve(x, cond, neg_cond, opts)])[0]
