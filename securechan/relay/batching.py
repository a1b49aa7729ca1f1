"""Group commit: the batch a writer thread takes from its job queue."""

from __future__ import annotations

import queue
from typing import TypeVar

__all__ = ["take_batch"]

T = TypeVar("T")


def take_batch(jobs: queue.SimpleQueue[T | None], first: T, limit: int) -> tuple[list[T], bool]:
    """``first`` plus every job already waiting, up to ``limit`` in all, so
    they share one commit. Returns the batch and whether the shutdown
    sentinel (``None``) was taken: the writer stops after this batch."""
    batch = [first]
    while len(batch) < limit:
        try:
            job = jobs.get_nowait()
        except queue.Empty:
            break
        if job is None:
            return batch, True
        batch.append(job)
    return batch, False
