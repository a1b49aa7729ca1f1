"""Untrusted text reaching a terminal (issue 11, class "Untrusted text"), end to end.

The attacker is a pinned contact (tehran) who sends washington a message and
a file whose name are made to drive washington's terminal: OSC 0 (window
title), OSC 52 (clipboard write), CSI colours and screen clearing, CR and BS
overwriting, C1 controls, bidi overrides and isolates, and a newline followed
by a line that imitates the tool's own "verified message" line, plus a long
line padded so that the terminal's own wrapping would start a screen line
with a forged head. A second attacker is a relay whose error body carries the
same. Everything is real: a ``securechan relay serve`` process on 127.0.0.1,
``securechan`` processes for both parties, and washington's commands run on a
pseudo-terminal (``os.openpty``, 80 columns) whose bytes are read exactly as
written (output post-processing off, so the tool's own ``\\n`` is not turned
into CR LF and any CR seen came from the program).

What must hold on washington's terminal: no byte below 0x20 but ``\\n``, no
DEL, no C1 control and no bidi or other flagged format character; each
hostile sequence is shown visibly (``\\x1b]0;...``, ``<U+202E>``); every line
carrying the contact's text after a line break starts with the continuation
prefix; no line is wide enough to wrap. ``--json`` keeps the exact text (and
prints only ASCII).
"""

from __future__ import annotations

import fcntl
import http.server
import json
import os
import select
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from securechan.terminal_text import CONTINUATION, is_flagged
from tests import test_e2e_relay as e2e
from tests.ndjson import ndjson
from tests.test_e2e_relay import Pair, Party, _command, _env, json_stream

# The real relay process and the two delegations of tests/test_e2e_relay.py.
relay, pristine, people, pair = e2e.relay, e2e.pristine, e2e.people, e2e.pair

COLUMNS = 80
FORGED = "[2026-12-04T12:00:00Z] washington (verified) #9: forged, agree to everything"
HOSTILE = (
    "Tehran: see below."
    "\x1b]0;PWNED window title\x07"  # OSC 0: set the window title
    "\x1b]52;c;ZWNobyBvd25lZA==\x07"  # OSC 52: write the clipboard
    "\x1b[31;1mRED\x1b[0m"  # CSI: colours
    "\x1b[2J\x1b[H"  # clear the screen, cursor home
    "\rOVERWRITTEN"  # CR: back to column 0
    "\x08\x08\x7f\x01"  # BS, DEL, SOH (the wire refuses NUL in text)
    "\x9b31m\x9d0;c1 title\x9c"  # C1 CSI and OSC
    " \u202egnp.exe\u202c \u2066isolated\u2069 \u200f\u061c\u200b\ufeff\u2028\u0085"
    "\n" + FORGED
)
HOSTILE_FILE = "annex\x1b]0;owned\x07\x1b[8m\u202etxt.exe\n" + FORGED + ".pdf"
# What each hostile piece must look like on the terminal.
VISIBLE = [
    "\\x1b]0;PWNED window title\\x07",
    "\\x1b]52;c;ZWNobyBvd25lZA==\\x07",
    "\\x1b[31;1mRED\\x1b[0m",
    "\\x1b[2J\\x1b[H",
    "\\x0dOVERWRITTEN",
    "\\x08\\x08\\x7f\\x01",
    "\\x9b31m\\x9d0;c1 title\\x9c",
    "<U+202E>gnp.exe<U+202C> <U+2066>isolated<U+2069> <U+200F><U+061C><U+200B><U+FEFF>"
    "<U+2028>\\x85",
]


# --- the pseudo-terminal ---------------------------------------------------------------


def on_pty(argv: list[str], env: dict[str, str], *, cwd: Path | None = None) -> tuple[int, bytes]:
    """Run ``argv`` with stdin, stdout and stderr on a new pseudo-terminal of
    COLUMNS x 24; return its exit code and every byte it wrote, unaltered."""
    master, slave = os.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, COLUMNS, 0, 0))
        attrs = termios.tcgetattr(slave)
        attrs[1] &= ~termios.OPOST  # no "\n" -> "\r\n": see the program's bytes
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd, start_new_session=True
        )
    finally:
        os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not chunk:
                break
            out += chunk
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, bytes(out)


def run_on_pty(party: Party, *args: object, cwd: Path | None = None) -> str:
    code, raw = on_pty(party.argv(*args), _env(party.passphrase), cwd=cwd)
    text = raw.decode("utf-8")
    assert "Traceback" not in text, text
    assert code == 0, text
    return text


def assert_terminal_safe(raw: str, *, peer_lines_from: int = 0) -> None:
    """Nothing on the terminal the peer could use to drive it or to start a
    screen line of its own (lines before ``peer_lines_from`` are the tool's
    own, which may wrap: a long fingerprint, say)."""
    bad = sorted({f"U+{ord(c):04X}" for c in raw if c != "\n" and is_flagged(c)})
    assert not bad, f"raw control or format characters reached the terminal: {bad}\n{raw!r}"
    for line in raw.split("\n")[peer_lines_from:]:
        # No line long enough to wrap (every character counted 1 column; the
        # output here is ASCII, so that is exact).
        assert len(line) < COLUMNS, f"a line wraps on a {COLUMNS}-column terminal: {line!r}"


def assert_forgery_marked(raw: str, forged: str = FORGED) -> None:
    """The contact's forged line appears only after the continuation prefix."""
    # The forged head may be cut over several lines; its start is what counts.
    start = forged[:22]  # "[2026-12-04T12:00:00Z]"
    lines = raw.split("\n")
    holding = [line for line in lines if start in line]
    assert holding, raw
    for line in holding:
        assert line.startswith(CONTINUATION), f"a peer line looks like the tool's: {line!r}"
    assert not any(line.startswith(start) for line in lines), raw


def send_text(sender: Party, to: str, text: str) -> None:
    proc = subprocess.run(
        sender.argv("send", to, "-"),
        input=text.encode("utf-8"),
        capture_output=True,
        env=_env(sender.passphrase),
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()


# --- a contact's message and file ------------------------------------------------------


def test_hostile_message_and_file_name_are_shown_escaped_on_the_terminal(
    pair: Pair, tmp_path: Path
) -> None:
    t, w = pair.t, pair.w
    # 1. --json keeps the exact text, printed as ASCII only.
    send_text(t, "washington", HOSTILE)
    raw = run_on_pty(w, "receive", "--json")
    assert raw.isascii(), raw
    got = [x for x in json_stream(raw) if x.get("type") == "text"]
    assert [x["text"] for x in got] == [HOSTILE]

    # 2. The same message again, shown to a person.
    send_text(t, "washington", HOSTILE)
    # A line padded to wrap just before a forged head, on an 80-column terminal.
    head = "[2026-12-04T12:00:00Z] tehran (verified) #4: "
    padded = "x" * (COLUMNS - len(head)) + FORGED
    send_text(t, "washington", padded)
    # 3. A file whose name is hostile (a file on tehran's disk can be named so).
    src = tmp_path / "outgoing" / HOSTILE_FILE
    src.parent.mkdir()
    src.write_bytes(b"%PDF-1.7 annex")
    t.ok("send", "washington", "--file", src)

    downloads = tmp_path / "downloads"
    raw = run_on_pty(w, "receive", "--download", downloads)
    assert_terminal_safe(raw)
    assert_forgery_marked(raw)
    for piece in VISIBLE:
        assert piece in raw.replace("\n" + CONTINUATION, ""), (piece, raw)
    assert (
        "annex\\x1b]0;owned\\x07\\x1b[8m<U+202E>txt.exe\\x0a[2026-12-04T12:00:00Z]"
        in raw.replace("\n" + CONTINUATION, "")
    )
    # The padded message: its forged head starts no line, and no line wraps.
    assert ("x" * (COLUMNS - len(head)) + FORGED) in raw.replace("\n" + CONTINUATION, "")
    saved = os.listdir(downloads)
    assert len(saved) == 1 and saved[0].isascii() and saved[0].isprintable(), saved

    # 4. history: the stored messages and the file name, shown the same way.
    raw = run_on_pty(w, "history")
    assert_terminal_safe(raw)
    assert_forgery_marked(raw)
    joined = raw.replace("\n" + CONTINUATION, "")
    for piece in VISIBLE:
        assert piece in joined, (piece, raw)
    assert "[file annex\\x1b]0;owned\\x07\\x1b[8m<U+202E>txt.exe" in joined
    # ... and exact in JSON.
    raw = run_on_pty(w, "history", "--json")
    assert raw.isascii()
    summaries = [row["summary"] for row in ndjson(raw)]
    assert summaries.count(HOSTILE) == 2
    assert padded in summaries
    assert f"[file {HOSTILE_FILE}, 14 bytes]" in summaries


# --- a statement's signer ---------------------------------------------------------------


def test_statement_verify_shows_the_signers_text_only_after_the_verdict_and_marked(
    pair: Pair, tmp_path: Path
) -> None:
    """The signer (tehran) writes lines that look like verify's own verdict
    ("log: leaf ... cosigned by ...") into the message it signs; a third party
    runs ``statement verify`` on a terminal."""
    t, w = pair.t, pair.w
    verdict = (
        "nothing to see\n  log:     leaf 0 of 1 in muscat.example/log\x1b[32m\n"
        "           cosigned by geneva.example/witness at 2026-12-04T12:00:00Z\n"
        "Statement of message 00: VALID\r\x1b]0;VALID\x07"
    )
    send_text(t, "washington", verdict)
    run_on_pty(w, "receive")
    mid = next(row["id"] for row in t.json("history") if row["summary"] == verdict)
    out = tmp_path / "statement.txt"
    t.ok("statement", "export", mid, "-o", out)

    # The third party: no home, no keys, only the file.
    code, raw_bytes = on_pty([*_command(), "statement", "verify", str(out)], _env())
    raw = raw_bytes.decode("utf-8")
    assert code == 0, raw
    lines = raw.split("\n")
    # The tool's verdict comes first; the signer's text after it, every one
    # of its further lines marked.
    assert lines[0].endswith(": VALID"), raw
    first = next(i for i, line in enumerate(lines) if "nothing to see" in line)
    assert lines[first].startswith("  content: "), raw
    assert_terminal_safe(raw, peer_lines_from=first)
    for line in lines[first + 1 :]:
        if line:
            assert line.startswith(CONTINUATION), f"signer text outside the quote: {line!r}"
    assert "\\x1b[32m" in raw and "\\x0d\\x1b]0;VALID\\x07" in raw
    # --json: the exact text.
    code, raw_bytes = on_pty([*_command(), "statement", "verify", str(out), "--json"], _env())
    assert code == 0
    assert raw_bytes.isascii()
    assert json.loads(raw_bytes)["content"] == verdict


# --- a hostile relay's error body -----------------------------------------------------------


class _HostileRelay(http.server.BaseHTTPRequestHandler):
    """A relay that answers every request with a 403 whose error message is
    made to drive the terminal."""

    body = json.dumps(
        {
            "error": {
                "code": "forbidden",
                "message": "no\x1b]0;relay title\x07\x1b[2J\u202e\n" + FORGED,
            }
        }
    ).encode()

    def do_GET(self) -> None:
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    do_POST = do_PUT = do_GET

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hostile_relay() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HostileRelay)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_a_relays_error_body_is_shown_escaped_on_one_line(
    people: dict[str, Party], hostile_relay: str
) -> None:
    w = people["washington"]
    code, raw_bytes = on_pty(w.argv("register", "--relay", hostile_relay), _env(w.passphrase))
    raw = raw_bytes.decode("utf-8")
    assert code == 3, raw
    assert "Traceback" not in raw
    assert_terminal_safe(raw)
    joined = raw.replace("\n" + CONTINUATION, "")
    # The line names the relay (issue 13), then its error body, escaped.
    head = f"securechan: relay {hostile_relay} refused the request: 403 no\\x1b]0;relay title"
    assert joined.startswith(head), raw
    assert "\\x07\\x1b[2J<U+202E>\\x0a[2026-12-04T12:00:00Z]" in joined
    # Off a terminal (a pipe), the error is exactly one line.
    proc = w.run("register", "--relay", hostile_relay)
    assert proc.returncode == 3
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert not any(is_flagged(c) for c in proc.stderr.rstrip("\n"))
