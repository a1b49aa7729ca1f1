"""The relay pushes its checkpoints to witnesses: C2SP tlog-witness ``add-checkpoint``.

For each configured witness URL (``[log] witness_urls``; the URL is the
witness's submission prefix), every ``[log] push_interval`` seconds while
the log has grown since the witness last cosigned:

1. POST ``<url>/add-checkpoint`` with ``old <size>`` (the size this witness
   last cosigned, as far as this process knows: 0 after a start, as the spec
   allows), the consistency proof from that size, and the newest checkpoint
   with only the log's own two signature lines.
2. 200: the answer's cosignature lines are added to the checkpoint and go
   through :meth:`RelayLog.add_cosignatures`, the same checks as a posted
   cosignature (only configured witness keys, each verified, stored durably).
3. 409 (``text/x.tlog.size``): the witness's size; if it is not above ours,
   one retry from it. A witness that cosigned a larger tree than this log
   has is reported as an error (a rolled-back or forked log, or another log
   under our origin), never retried.
4. 400/403/404/422, other codes and network errors are logged (no witness
   answer ever stops the relay or reaches a client) and tried again at the
   next interval.

As Tessera and Sigsum do, the log asks and the witness answers; the older
``securechan witness cosign`` (the witness polls, ``POST /v1/log/cosignature``)
still works alongside.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
from collections.abc import Sequence
from typing import Final

import aiohttp

from securechan.audit.checkpoint import Checkpoint
from securechan.audit.note import SignedNote, keep_signatures
from securechan.errors import MalformedInput
from securechan.relay.tlog import CosignatureRefused, RelayLog

__all__ = ["DEFAULT_PUSH_INTERVAL", "WitnessPusher", "check_push_options", "stop_pushing"]

log = logging.getLogger("securechan.relay")

DEFAULT_PUSH_INTERVAL: Final = 1.0
_TIMEOUT: Final = 30.0
_MAX_ANSWER: Final = 64 * 1024
_SIZE: Final = re.compile(r"(0|[1-9][0-9]{0,19})\n")


def check_push_options(urls: Sequence[str], interval: float) -> None:
    """``ValueError`` unless each URL is ``http(s)://host[/prefix]`` and the
    interval is 0.01 to 86400 seconds."""
    for url in urls:
        if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", url):
            raise ValueError(f"a witness URL is http(s)://host[/prefix]: {url[:100]!r}")
    if not 0.01 <= interval <= 86_400:
        raise ValueError("push_interval is 0.01 to 86400 seconds")


class WitnessPusher:
    """Pushes ``tlog``'s checkpoints to witness URLs; :meth:`run` until cancelled."""

    def __init__(
        self, tlog: RelayLog, urls: Sequence[str], *, interval: float = DEFAULT_PUSH_INTERVAL
    ) -> None:
        check_push_options(urls, interval)
        self.tlog = tlog
        self.urls = tuple(dict.fromkeys(u.rstrip("/") for u in urls))
        self.interval = interval
        # Per URL: the size the witness last cosigned, as far as we know;
        # the size whose cosignatures we stored; the last outcome (a failure
        # is logged when it changes, not at every interval).
        self.cosigned: dict[str, int] = {}
        self.stored: dict[str, int] = {}
        self.outcome: dict[str, str] = {}

    async def run(self) -> None:
        """Push every interval, to every witness at once."""
        timeout = aiohttp.ClientTimeout(total=_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                await asyncio.gather(*(self._guarded(session, u) for u in self.urls))
                await asyncio.sleep(self.interval)

    async def _guarded(self, session: aiohttp.ClientSession, url: str) -> None:
        try:
            outcome, why = await self.push(session, url)
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            outcome, why = "unreachable", f"cannot reach it ({type(e).__name__})"
        if outcome != self.outcome.get(url) and why:
            log.warning("witness %s: %s", url, why)
        self.outcome[url] = outcome

    async def push(self, session: aiohttp.ClientSession, url: str) -> tuple[str, str]:
        """One push of the newest checkpoint to ``url``: (outcome, what to
        log if it is new; empty for success)."""
        note = keep_signatures(self.tlog.checkpoint(), [self.tlog.verifier, self.tlog.pq_verifier])
        if note is None:  # never: the log signs its own checkpoints
            return "unsigned", "the log's checkpoint has no signature of its own"
        size = Checkpoint.from_text(SignedNote.from_text_unverified(note).text).size
        if self.stored.get(url) == size:
            return "cosigned", ""
        for _ in range(2):
            old = self.cosigned.get(url, 0)
            if old > size:
                log.error(
                    "witness %s cosigned size %d, larger than this log's %d:"
                    " a rolled-back or forked log, or another log under our origin",
                    url,
                    old,
                    size,
                )
                return "ahead", ""
            proof = await self.tlog.consistency_proof(old, size) if 0 < old < size else []
            body = "".join(
                [f"old {old}\n", *(base64.b64encode(h).decode() + "\n" for h in proof), "\n", note]
            )
            async with session.post(url + "/add-checkpoint", data=body.encode()) as resp:
                answer = await resp.content.read(_MAX_ANSWER)
                ctype = resp.headers.get("Content-Type", "")
                status = resp.status
            if status == 409 and ctype.split(";")[0].strip() == "text/x.tlog.size":
                m = _SIZE.fullmatch(answer.decode("ascii", "replace"))
                if m is None:
                    return "409", "a 409 without a size"
                self.cosigned[url] = int(m.group(1))
                continue  # once more, from the witness's size
            if status != 200:
                return str(status), f"answered {status}: {_shown(answer)}"
            self.cosigned[url] = size  # the witness moved: whatever we make of its answer
            return await self._store(url, note, size, answer)
        return "409", "answered 409 twice"

    async def _store(self, url: str, note: str, size: int, answer: bytes) -> tuple[str, str]:
        try:
            cosigned = note + answer.decode("utf-8")
            await self.tlog.add_cosignatures(cosigned.encode())
        except (UnicodeDecodeError, MalformedInput) as e:
            return "malformed", f"a malformed answer ({e})"
        except CosignatureRefused as e:
            return e.reason, f"cosignature refused ({e.reason}: {e.message})"
        self.stored[url] = size
        return "cosigned", ""


def _shown(answer: bytes) -> str:
    text = answer[:200].decode("utf-8", "replace")
    return "".join(c if c.isprintable() else " " for c in text).strip()


async def stop_pushing(task: asyncio.Task[None] | None) -> None:
    """Cancel a pusher task and wait for it."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
