"""Flow matching: the ODE from noise to an acoustic vector and its durations, for many streams at once.

Every solve's adaLN modulations (they depend on the condition and the ODE time only) are computed
in one matmul for all steps of all solves; each ODE step then makes one head call over the rows
of every solve still running. Solves may differ in step count, time schedule and guidance: the
guided combination and the Euler update run per solve with that solve's own scalars, so each
solve's arithmetic is exactly what it is alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..nn.linear import invariant_rows, pad_rows
from ..timecode import decode_time
from .options import InferenceOptions
from .requests import FlowSolve


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


def _schedule(solve: FlowSolve) -> tuple[_Ode, torch.Tensor]:
    opts = solve.options
    grid = time_grid(opts.num_flow_matching_steps, opts.time_schedule, solve.cond.device)
    times = grid[:-1].tolist()
    scales = [
        (
            scheduled_cfg(opts.acoustic_cfg_scale, t, opts.cfg_schedule),
            scheduled_cfg(opts.duration_cfg_scale, t, opts.cfg_schedule),
        )
        for t in times
    ]
    conds = solve.cond
    if any(a != 1.0 for a, _ in scales):
        conds = torch.cat([conds, solve.neg.to(conds)], dim=0)
    return _Ode(grid, scales, solve.noise), conds


def solve_flows(model, solves: Sequence[FlowSolve]) -> list[torch.Tensor]:
    """Final latents, (1, latent) per solve (the best candidate where a solve has several)."""
    head, min_rows = model.prediction_head, invariant_rows(model.device, model.dtype)
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
