"""Text armour: a wire record as copy-pasteable text.

securechan's files that people handle (public identities, detached
signatures, encrypted key files) are one wire record in base64, framed like
PEM (RFC 7468) with a few ``Key: value`` headers for people to read::

    -----BEGIN SECURECHAN PUBLIC IDENTITY-----
    Version: 1
    Name: tehran
    Fingerprint: 3F2A 91C0 ...

    <base64 of the record, 64 characters a line>
    -----END SECURECHAN PUBLIC IDENTITY-----

Rules (``docs/PROTOCOL.md`` §3):

* Text before the BEGIN line and after the END line is ignored, so a block
  pasted out of an e-mail still reads; CRLF line ends and trailing blanks are
  tolerated. Everything between the two lines is strict.
* ``Version`` comes first and must be ``1``; another number is refused with
  :class:`~securechan.errors.UnsupportedVersion`.
* Header names are unique; the caller decides which are allowed and checks
  that each one agrees with the decoded body (headers are a convenience for
  people, never an authority).
* The base64 body is canonical (RFC 4648 alphabet, padding, no stray bits):
  it must re-encode to exactly the text given.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from securechan.errors import MalformedInput, UnsupportedVersion

__all__ = ["ARMOR_VERSION", "Armored", "armor", "dearmor"]

ARMOR_VERSION = 1
_LINE = 64
_LABEL = re.compile(r"[A-Z][A-Z ]{0,40}[A-Z]")
_HEADER_NAME = re.compile(r"[A-Z][A-Za-z-]{0,30}")
# Longest armoured file accepted: bounds memory before any parsing.
MAX_ARMOR_CHARS = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class Armored:
    """A decoded armour block: its label, headers (minus Version), body."""

    label: str
    headers: dict[str, str]
    body: bytes


def armor(label: str, body: bytes, headers: list[tuple[str, str]]) -> str:
    """Frame ``body`` as armoured text with ``headers`` after ``Version``."""
    if not _LABEL.fullmatch(label):
        raise ValueError("armour labels are upper-case words")
    if not body:
        raise ValueError("an armoured body is never empty")
    if len({name for name, _ in headers}) != len(headers):
        raise ValueError("header names must be unique")
    lines = [f"-----BEGIN SECURECHAN {label}-----", f"Version: {ARMOR_VERSION}"]
    for name, value in headers:
        if not _HEADER_NAME.fullmatch(name) or name == "Version":
            raise ValueError(f"bad header name {name!r}")
        if not value or not value.isprintable() or value != value.strip():
            raise ValueError(f"header {name} is empty or has line breaks or outer blanks")
        lines.append(f"{name}: {value}")
    lines.append("")
    text = base64.b64encode(body).decode("ascii")
    lines.extend(text[i : i + _LINE] for i in range(0, len(text), _LINE))
    lines.append(f"-----END SECURECHAN {label}-----")
    return "\n".join(lines) + "\n"


def dearmor(text: str, label: str, *, allowed_headers: frozenset[str]) -> Armored:
    """Parse the first ``label`` block in ``text``; raise :class:`MalformedInput`.

    Raises :class:`UnsupportedVersion` for a ``Version`` other than 1.
    """
    if len(text) > MAX_ARMOR_CHARS:
        raise MalformedInput("armoured text is too long")
    begin = f"-----BEGIN SECURECHAN {label}-----"
    end = f"-----END SECURECHAN {label}-----"
    lines = [line.rstrip(" \t\r") for line in text.split("\n")]
    try:
        start = lines.index(begin)
    except ValueError:
        raise MalformedInput(f"no '{begin}' line found") from None
    try:
        stop = lines.index(end, start + 1)
    except ValueError:
        raise MalformedInput(f"no '{end}' line found (truncated?)") from None
    inner = lines[start + 1 : stop]
    if not inner or not inner[0].startswith("Version:"):
        raise MalformedInput("the first header must be Version")
    headers: dict[str, str] = {}
    i = 0
    while i < len(inner) and inner[i] != "":
        name, sep, value = inner[i].partition(": ")
        if (
            not sep
            or not _HEADER_NAME.fullmatch(name)
            or value != value.strip()
            or not value.isprintable()  # what armor() could have written
        ):
            raise MalformedInput(f"bad header line {i + 1}")
        if name in headers:
            raise MalformedInput(f"header {name} appears twice")
        if name != "Version" and name not in allowed_headers:
            raise MalformedInput(f"unknown header {name}")
        headers[name] = value
        i += 1
    if i == len(inner):
        raise MalformedInput("no blank line between headers and body")
    version = headers.pop("Version")
    if version != str(ARMOR_VERSION):
        if re.fullmatch(r"[0-9]{1,5}", version):
            raise UnsupportedVersion(
                f"format version {version} is not supported (this build reads {ARMOR_VERSION})"
            )
        raise MalformedInput("bad Version header")
    body_lines = inner[i + 1 :]
    if not body_lines:
        raise MalformedInput("empty body")
    if any(len(line) != _LINE for line in body_lines[:-1]) or not 0 < len(body_lines[-1]) <= _LINE:
        raise MalformedInput("body lines must be 64 characters (the last 1..64)")
    b64 = "".join(body_lines)
    try:
        body = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedInput("body is not base64") from None
    if base64.b64encode(body).decode("ascii") != b64:
        raise MalformedInput("body is not canonical base64")
    return Armored(label=label, headers=headers, body=body)
