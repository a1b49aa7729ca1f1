"""What `send` does with text the wire cannot carry as given: a NUL, text
that is not in Unicode NFC, text longer than one message holds.

Found while closing issue 11's "no traceback" class: `securechan send
CONTACT -` with a NUL on stdin died in a `ValueError` traceback from the wire
encoder, and so did a 300 KB text. Now both are one line and exit 2, before
anything is stored or posted; text not in NFC is sent in NFC (canonically
equivalent: nothing a reader sees changes). Real relay, real CLI processes.
"""

from __future__ import annotations

import subprocess
import unicodedata

from securechan.protocol.payload import MAX_TEXT_BYTES
from tests import test_e2e_relay as e2e
from tests.test_e2e_relay import Pair, _env, one_line_error, texts, transcript

relay = e2e.relay
pristine = e2e.pristine
people = e2e.people
pair = e2e.pair


def _send_stdin(pair: Pair, data: bytes) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        pair.t.argv("send", "washington", "-"),
        input=data.decode("utf-8"),
        capture_output=True,
        text=True,
        env=_env(pair.t.passphrase),
        timeout=120,
        check=False,
    )
    return proc


def test_nul_and_oversized_text_are_one_line_and_nothing_is_sent(pair: Pair) -> None:
    pair.t.ok("send", "washington", "Tehran: opening the channel")
    assert [x["text"] for x in texts(pair.w.items("receive"))] == ["Tehran: opening the channel"]
    before = pair.t.json("history", "washington")

    line = one_line_error(_send_stdin(pair, b"agreed\x00 text after a NUL"), 2)
    assert "NUL" in line
    line = one_line_error(_send_stdin(pair, b"x" * (300 * 1024)), 2)
    assert str(MAX_TEXT_BYTES) in line and "--file" in line
    # The limit itself is accepted: the refusal is exactly at the documented size.
    at_limit = "y" * MAX_TEXT_BYTES
    proc = _send_stdin(pair, at_limit.encode())
    assert proc.returncode == 0, transcript(proc)

    got = [x["text"] for x in texts(pair.w.items("receive"))]
    assert got == [at_limit]  # neither refused text reached the peer
    after = pair.t.json("history", "washington")
    assert len(after) == len(before) + 1


def test_text_not_in_nfc_is_sent_in_nfc(pair: Pair) -> None:
    decomposed = "Communique\u0301 final"  # e + COMBINING ACUTE ACCENT
    assert not unicodedata.is_normalized("NFC", decomposed)
    proc = _send_stdin(pair, decomposed.encode())
    assert proc.returncode == 0, transcript(proc)
    got = [x["text"] for x in texts(pair.w.items("receive"))]
    assert got == [unicodedata.normalize("NFC", decomposed)] == ["Communiqu\u00e9 final"]
