"""Group commit: the batch a writer thread takes from its job queue.

A commit has a fixed cost (SQLite's BEGIN and COMMIT, the WAL frames of the
pages every job touches, the sync, waking the event loop) that its jobs
share. Measured on the relay's writers, it is worth several jobs' own work,
so under load the batch is let to grow a little before it commits: while
jobs keep arriving (at least one in each :data:`LINGER_STEP`), the writer
waits for them, up to :data:`LINGER` in all. It waits by sleeping a step and
then taking what came, not by blocking on the queue, so that it is woken
once per step rather than once per job. A job that arrives alone (no
other job waiting when it is taken) is committed at once, so a lightly
loaded relay adds no delay; under load the wait replaces time the callers
would have spent queued anyway, and the CPU it saves goes to them. Durability
is unchanged: every job still returns only after its commit.

The cap is kept short: a send waits for relay.db's commit and then for the
transparency log's, and with a fixed number of clients every millisecond of
waiting is throughput lost. The log's writer does not linger at all (its jobs
arrive in bursts, one per relay.db batch).

Nor does a writer whose previous batch took longer than the cap between
being taken and the writer coming back for the next one (a slow ``fsync``:
4-6 ms on a busy virtual disk against 0.15 ms on a quiet one): jobs already
gathered while that batch committed, and lingering on top only lengthens
every cycle. Measured with ``bench/bench_relay_wrk.py`` on a disk whose fsync
took ~4 ms, batches of ~20 took 1.8 ms of linger each (about a fifth of the
cycle); without it the relay answered 15-20 % more sends per second. On a
fast disk the previous batch is shorter than the cap and nothing changes.
"""

from __future__ import annotations

import queue
import time
import weakref
from typing import Any, Final, TypeVar

__all__ = ["LINGER", "LINGER_STEP", "take_batch"]

T = TypeVar("T")

# Per job queue: when take_batch last returned a batch (the writer's work on
# that batch is the time from then until it comes back).
_returned: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

LINGER: Final = 0.003
"""Most seconds a batch of two or more jobs waits for more before it commits
(3 ms: batches of ~8 under the relay benchmark's load instead of ~4)."""
LINGER_STEP: Final = 0.001
"""The wait ends when no new job arrived during a step of this many seconds."""


def take_batch(
    jobs: queue.SimpleQueue[T | None],
    first: T,
    limit: int,
    *,
    linger: float = LINGER,
    step: float = LINGER_STEP,
) -> tuple[list[T], bool]:
    """``first`` plus every job already waiting, and (if that makes two or
    more) those that keep arriving for up to ``linger`` seconds, up to
    ``limit`` in all, so they share one commit. Returns the batch and whether
    the shutdown sentinel (``None``) was taken: the writer stops after this
    batch."""
    batch = [first]
    started = time.monotonic()
    last = _returned.get(jobs)
    if last is not None and started - last > linger:
        linger = 0.0  # the previous batch's work outlasted the cap: do not add to it
    try:
        return _take(jobs, batch, limit, linger, step)
    finally:
        _returned[jobs] = time.monotonic()


def _take(
    jobs: queue.SimpleQueue[T | None],
    batch: list[T],
    limit: int,
    linger: float,
    step: float,
) -> tuple[list[T], bool]:
    deadline = 0.0
    while len(batch) < limit:
        try:
            job = jobs.get_nowait()
        except queue.Empty:
            if len(batch) < 2 or linger <= 0:
                break  # alone: commit now
            now = time.monotonic()
            if not deadline:
                deadline = now + linger
            wait = min(step, deadline - now)
            if wait <= 0:
                break
            # Sleep, then look: blocking in get() instead would wake this
            # thread (and take the GIL from the event loop) once per arriving
            # job, two context switches per send; this wakes once per step.
            time.sleep(wait)
            try:
                job = jobs.get_nowait()
            except queue.Empty:
                break  # the burst is over
        if job is None:
            return batch, True
        batch.append(job)
    return batch, False
