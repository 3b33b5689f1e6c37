"""Deterministic batches: the order of epoch e depends only on (seed, e), so a resumed run
replays exactly the batches an uninterrupted run would have seen."""

from __future__ import annotations

import torch

from ssam.data.samples import build_weighted_sampler, epoch_generator


def compute_epoch_order(
    lengths: list[int], weights: list[float], seed: int, epoch: int, num_samples: int | None
) -> list[int]:
    """Sample indices (into the concatenated datasets) for one epoch.

    One dataset and no ``num_samples``: a seeded permutation (every sample once). Otherwise
    draws with replacement, dataset d with probability proportional to ``weights[d]``.
    """
    if len(lengths) == 1 and num_samples is None:
        return torch.randperm(lengths[0], generator=epoch_generator(seed, epoch)).tolist()
    sized = [range(n) for n in lengths]
    sampler = build_weighted_sampler(
        sized, weights, seed=seed, epoch=epoch, num_samples=num_samples
    )
    return list(sampler)


def split_batches(
    order: list[int], batch_size: int, rank: int = 0, world_size: int = 1
) -> list[list[int]]:
    """This process's batches: global batches of ``batch_size * world_size`` samples, each
    dealt round-robin across processes; a last incomplete global batch is dropped when
    there are several processes (every process must step the same number of times)."""
    global_size = batch_size * world_size
    batches = []
    for start in range(0, len(order), global_size):
        chunk = order[start : start + global_size]
        if world_size > 1 and len(chunk) < global_size:
            break
        mine = chunk[rank::world_size]
        if mine:
            batches.append(mine)
    return batches


def group_for_accumulation(batches: list[list[int]], accumulation: int) -> list[list[list[int]]]:
    """Consecutive micro-batches that make one optimiser step."""
    return [batches[i : i + accumulation] for i in range(0, len(batches), accumulation)]


def chunk_rows(size: int, chunk: int) -> list[slice]:
    """Rows 0..size-1 of a batch in consecutive slices of at most ``chunk`` rows."""
    return [slice(start, min(start + chunk, size)) for start in range(0, size, chunk)]


def plan_micro_batch(
    batch_size: int, image_size: int, bytes_per_pixel: float, budget_bytes: float
) -> int:
    """Images per forward/backward pass: the most whose training activations (about
    ``bytes_per_pixel`` per input pixel) fit ``budget_bytes``; at least 1, at most the batch."""
    per_image = bytes_per_pixel * image_size * image_size
    return max(1, min(batch_size, int(budget_bytes // per_image)))
