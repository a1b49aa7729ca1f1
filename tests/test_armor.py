"""Text armour (securechan.armor).

The module docstring of ``securechan/armor.py`` is the spec: lenient outside
the BEGIN/END lines, strict between them, ``Version: 1`` first, unique
headers, canonical base64 in 64-character lines.
"""

from __future__ import annotations

import base64
import string
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securechan.armor import ARMOR_VERSION, MAX_ARMOR_CHARS, Armored, armor, dearmor
from securechan.errors import MalformedInput, UnsupportedVersion

LABEL = "PUBLIC IDENTITY"
ALLOWED = frozenset({"Name", "Fingerprint"})
# 100 bytes: 136 base64 characters, so three body lines (64, 64, 8) and a
# final quad with "==" padding, so non-canonical padding bits can be set.
BODY = bytes(range(100))
HEADERS = [("Name", "tehran"), ("Fingerprint", "3F2A 91C0 77B1")]
BEGIN = f"-----BEGIN SECURECHAN {LABEL}-----"
END = f"-----END SECURECHAN {LABEL}-----"


def good() -> str:
    return armor(LABEL, BODY, HEADERS)


def read(text: str, allowed: frozenset[str] = ALLOWED) -> Armored:
    return dearmor(text, LABEL, allowed_headers=allowed)


def edit(change: Callable[[list[str]], list[str]]) -> str:
    """Apply ``change`` to the lines of the valid armour."""
    return "\n".join(change(good().split("\n")))


def _at(lines: list[str], index: int, value: str) -> list[str]:
    return [*lines[:index], value, *lines[index + 1 :]]


# Line numbers of good(): 0 BEGIN, 1 Version, 2 Name, 3 Fingerprint, 4 blank,
# 5-7 body, 8 END, 9 "" (after the final newline).
V, NAME, FP, BLANK, B1, B2, B3, E = 1, 2, 3, 4, 5, 6, 7, 8


def test_layout_known_answer() -> None:
    b64 = base64.b64encode(BODY).decode()
    assert len(b64) == 136
    assert good() == (
        f"{BEGIN}\n"
        "Version: 1\n"
        "Name: tehran\n"
        "Fingerprint: 3F2A 91C0 77B1\n"
        "\n"
        f"{b64[:64]}\n{b64[64:128]}\n{b64[128:]}\n"
        f"{END}\n"
    )
    assert good().split("\n")[E] == END


def test_roundtrip_with_headers() -> None:
    got = read(good())
    assert got == Armored(
        label=LABEL,
        headers={"Name": "tehran", "Fingerprint": "3F2A 91C0 77B1"},
        body=BODY,
    )
    assert "Version" not in got.headers
    assert ARMOR_VERSION == 1


@pytest.mark.parametrize("size", [1, 2, 3, 47, 48, 49, 96, 97, 1000])
def test_roundtrip_line_boundaries(size: int) -> None:
    body = bytes((i * 7) % 256 for i in range(size))
    text = armor("SIGNATURE", body, [])
    lines = text.split("\n")
    body_lines = lines[3:-2]
    assert all(len(line) == 64 for line in body_lines[:-1])
    assert 0 < len(body_lines[-1]) <= 64
    assert dearmor(text, "SIGNATURE", allowed_headers=frozenset()).body == body


def test_surrounding_email_text_is_ignored() -> None:
    text = (
        "Hi Tehran,\n"
        "> On Monday you wrote:\n"
        "> -----BEGIN SECURECHAN SIGNATURE-----\n"
        "here is my identity:\n\n" + good() + "\n-- \nSent from my phone\n"
        "-----END SECURECHAN PUBLIC IDENTITY-----\n"
    )
    assert read(text) == read(good())


def test_crlf_and_trailing_blanks_are_tolerated() -> None:
    assert read(good().replace("\n", "\r\n")) == read(good())
    assert read(good().replace("\n", " \t\r\n")) == read(good())


def test_first_block_of_the_label_is_read() -> None:
    other = armor(LABEL, b"second", [])
    signature = armor("SIGNATURE", b"sig", [])
    assert read(signature + good() + other).body == BODY
    assert read(other + good()).body == b"second"


def test_allowed_headers_gate() -> None:
    # The caller decides which headers it accepts; Version is always known.
    assert read(armor(LABEL, BODY, []), allowed=frozenset()).headers == {}
    with pytest.raises(MalformedInput):
        read(good(), allowed=frozenset({"Name"}))


# --------------------------------------------------------------------------
# Refusals. Each case: a broken armour and why it is bad.


def _flip_padding_bits(lines: list[str]) -> list[str]:
    # The last quad is "xy==": only the top 2 bits of "y" carry data, the low
    # 4 are padding. Setting one gives a different text for the same bytes;
    # accepting it would make armour malleable (two texts, one record).
    last = lines[B3]
    assert last.endswith("==")
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "+/"
    y = alphabet[alphabet.index(last[-3]) ^ 0b0001]
    return _at(lines, B3, last[:-3] + y + "==")


def _rewrap(width: int) -> Callable[[list[str]], list[str]]:
    def change(lines: list[str]) -> list[str]:
        b64 = "".join(lines[B1 : B3 + 1])
        wrapped = [b64[i : i + width] for i in range(0, len(b64), width)]
        return [*lines[:B1], *wrapped, *lines[B3 + 1 :]]

    return change


REFUSED: list[tuple[str, Callable[[list[str]], list[str]]]] = [
    # No BEGIN line: nothing to read.
    ("no-begin", lambda ls: ls[1:]),
    # A BEGIN line of another label: a signature is not an identity.
    ("other-label", lambda ls: _at(ls, 0, "-----BEGIN SECURECHAN SIGNATURE-----")),
    # Quoted BEGIN line: only exact framing lines count.
    ("quoted-begin", lambda ls: _at(ls, 0, "> " + BEGIN)),
    # No END line: the paste was truncated, the body may be cut short.
    ("no-end", lambda ls: ls[:E]),
    ("truncated-mid-body", lambda ls: ls[:B2]),
    # Version missing or not first: the format version must be known before
    # anything else is interpreted.
    ("version-missing", lambda ls: ls[:V] + ls[V + 1 :]),
    ("version-not-first", lambda ls: [ls[0], ls[NAME], ls[V], *ls[FP:]]),
    ("version-no-space", lambda ls: _at(ls, V, "Version:1")),
    ("version-empty", lambda ls: _at(ls, V, "Version:")),
    ("version-lowercase-name", lambda ls: _at(ls, V, "version: 1")),
    # A Version that is not a small decimal number is garbage, not a version.
    ("version-abc", lambda ls: _at(ls, V, "Version: abc")),
    ("version-1.0", lambda ls: _at(ls, V, "Version: 1.0")),
    ("version-negative", lambda ls: _at(ls, V, "Version: -1")),
    ("version-huge", lambda ls: _at(ls, V, "Version: 1000000")),
    # A header twice: which one would a person or the caller believe?
    ("duplicate-header", lambda ls: [*ls[:FP], "Name: mallory", *ls[FP:]]),
    ("duplicate-version", lambda ls: [*ls[:NAME], "Version: 1", *ls[NAME:]]),
    # A header the caller did not allow: smuggled, unreviewed metadata.
    ("unknown-header", lambda ls: [*ls[:BLANK], "Comment: trust me", *ls[BLANK:]]),
    # Malformed header lines.
    ("header-no-separator", lambda ls: _at(ls, NAME, "Name=tehran")),
    ("header-no-space", lambda ls: _at(ls, NAME, "Name:tehran")),
    ("header-leading-blank-value", lambda ls: _at(ls, NAME, "Name:  tehran")),
    ("header-bad-name", lambda ls: _at(ls, NAME, "name: tehran")),
    ("header-underscore-name", lambda ls: _at(ls, NAME, "Na_me: tehran")),
    ("header-indented", lambda ls: _at(ls, NAME, " Name: tehran")),
    # No blank line: where the headers end and the body starts is ambiguous.
    ("no-blank-line", lambda ls: ls[:BLANK] + ls[BLANK + 1 :]),
    ("only-headers", lambda ls: ls[:BLANK] + ls[E:]),
    # Body lines must be 64 characters (the last 1..64).
    ("body-lines-63", _rewrap(63)),
    ("body-lines-65", _rewrap(65)),
    ("body-lines-one-long-line", _rewrap(200)),
    ("body-blank-line-inside", lambda ls: [*ls[:B2], "", *ls[B2:]]),
    ("body-blank-line-before-end", lambda ls: [*ls[:E], "", *ls[E:]]),
    ("body-two-blank-lines-before", lambda ls: [*ls[:B1], "", *ls[B1:]]),
    # Characters outside the RFC 4648 base64 alphabet.
    ("body-asterisk", lambda ls: _at(ls, B1, "*" + ls[B1][1:])),
    ("body-urlsafe-dash", lambda ls: _at(ls, B1, "-" + ls[B1][1:])),
    ("body-urlsafe-underscore", lambda ls: _at(ls, B1, "_" + ls[B1][1:])),
    ("body-inner-space", lambda ls: _at(ls, B1, ls[B1][:10] + " " + ls[B1][11:])),
    ("body-non-ascii", lambda ls: _at(ls, B1, "\u00e9" + ls[B1][1:])),
    ("body-fullwidth-digit", lambda ls: _at(ls, B1, "\uff10" + ls[B1][1:])),
    ("body-padding-inside", lambda ls: _at(ls, B1, ls[B1][:60] + "AA==")),
    # Non-canonical base64: same bytes, other text (malleability).
    ("body-padding-bits-set", _flip_padding_bits),
    ("body-padding-missing", lambda ls: _at(ls, B3, ls[B3].rstrip("="))),
    ("body-padding-extra", lambda ls: _at(ls, B3, ls[B3] + "==")),
    # An empty body carries no record.
    ("empty-body", lambda ls: ls[: BLANK + 1] + ls[E:]),
]


@pytest.mark.parametrize("change", [c for _, c in REFUSED], ids=[n for n, _ in REFUSED])
def test_refused(change: Callable[[list[str]], list[str]]) -> None:
    text = edit(change)
    assert text != good()
    with pytest.raises(MalformedInput) as info:
        read(text)
    # None of these is a well-formed block from a newer version.
    assert not isinstance(info.value, UnsupportedVersion)
    # Errors never echo the header values or body they refused.
    assert "tehran" not in str(info.value)
    assert base64.b64encode(BODY).decode()[:16] not in str(info.value)


def test_padding_bits_case_is_same_bytes_other_text() -> None:
    # The premise of "body-padding-bits-set": a lenient decoder would accept
    # the altered text and yield exactly the original bytes.
    lines = good().split("\n")
    altered = "".join(_flip_padding_bits(lines)[B1 : B3 + 1])
    original = "".join(lines[B1 : B3 + 1])
    assert altered != original
    assert base64.b64decode(altered) == BODY


@pytest.mark.parametrize("version", ["2", "0", "10", "99999"])
def test_other_version_is_unsupported(version: str) -> None:
    text = edit(lambda ls: _at(ls, V, f"Version: {version}"))
    with pytest.raises(UnsupportedVersion):
        read(text)


def test_too_long_text_is_refused_before_parsing() -> None:
    # The block itself is fine and surrounding text is normally ignored: the
    # refusal comes from the size bound alone, which caps memory and time.
    padding = "x" * (MAX_ARMOR_CHARS - len(good()))
    assert read(good() + padding).body == BODY  # exactly at the limit: read
    with pytest.raises(MalformedInput):
        read(good() + padding + "x")
    with pytest.raises(MalformedInput):
        read(good() + "\n" * MAX_ARMOR_CHARS)


# --------------------------------------------------------------------------
# What armor() accepts, dearmor() must read back: otherwise the writer makes
# files its own reader refuses.

WRITER_CASES = [
    pytest.param([("Name", "")], BODY, id="empty-header-value"),
    pytest.param([("Name", "a"), ("Name", "b")], BODY, id="duplicate-header-name"),
    pytest.param([("Name", "a")], b"", id="empty-body"),
]


@pytest.mark.parametrize(("headers", "body"), WRITER_CASES)
def test_armor_output_is_readable_or_refused(headers: list[tuple[str, str]], body: bytes) -> None:
    try:
        text = armor(LABEL, body, headers)
    except ValueError:
        return  # refusing to write is fine
    got = read(text, allowed=frozenset(name for name, _ in headers))
    assert got.body == body
    assert list(got.headers.items()) == headers


ARMOR_MISUSE = [
    pytest.param("public identity", [], id="lowercase-label"),
    pytest.param("X", [], id="one-letter-label"),
    pytest.param("A" * 43, [], id="label-too-long"),
    pytest.param("PUBLIC-IDENTITY", [], id="label-dash"),
    pytest.param(LABEL, [("Version", "1")], id="header-version"),
    pytest.param(LABEL, [("name", "x")], id="header-lowercase"),
    pytest.param(LABEL, [("Na me", "x")], id="header-name-space"),
    pytest.param(LABEL, [("Name", "a\nVersion: 2")], id="value-newline"),
    pytest.param(LABEL, [("Name", "a\rb")], id="value-cr"),
    pytest.param(LABEL, [("Name", " a")], id="value-leading-blank"),
    pytest.param(LABEL, [("Name", "a ")], id="value-trailing-blank"),
]


@pytest.mark.parametrize(("label", "headers"), ARMOR_MISUSE)
def test_armor_misuse(label: str, headers: list[tuple[str, str]]) -> None:
    with pytest.raises(ValueError, match=r"label|header"):
        armor(label, BODY, headers)


# --------------------------------------------------------------------------
# Properties.

labels = st.from_regex(r"[A-Z][A-Z ]{0,40}[A-Z]", fullmatch=True)
header_names = st.from_regex(r"[A-Z][A-Za-z-]{0,30}", fullmatch=True).filter(
    lambda n: n != "Version"
)
# Header values are printable text without outer blanks (armor() refuses
# anything else, and dearmor() accepts nothing armor() could not write).
header_values = st.text(
    alphabet=st.characters(exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")),
    min_size=1,
    max_size=60,
).filter(lambda v: v == v.strip() and v.isprintable())
header_lists = st.lists(
    st.tuples(header_names, header_values), max_size=5, unique_by=lambda h: h[0]
)


@settings(max_examples=150, deadline=None)
@given(labels, st.binary(min_size=1, max_size=600), header_lists)
def test_roundtrip_property(label: str, body: bytes, headers: list[tuple[str, str]]) -> None:
    text = armor(label, body, headers)
    got = dearmor(text, label, allowed_headers=frozenset(n for n, _ in headers))
    assert got == Armored(label=label, headers=dict(headers), body=body)
    # Still read when pasted with CRLF inside other text.
    pasted = "> quoted\r\n" + text.replace("\n", "\r\n") + "-- \r\nsig\r\n"
    assert dearmor(pasted, label, allowed_headers=frozenset(n for n, _ in headers)) == got


def _only_malformed(text: str) -> None:
    """dearmor refuses with MalformedInput, or returns a block that survives
    being written out and read back; any other exception fails the test."""
    try:
        got = dearmor(text, LABEL, allowed_headers=ALLOWED)
    except MalformedInput:
        return
    assert got.body
    assert set(got.headers) <= ALLOWED
    assert read(armor(LABEL, got.body, list(got.headers.items()))) == got


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.text(max_size=300))
def test_random_text_only_malformed(text: str) -> None:
    _only_malformed(text)


# Lines that look like armour, so the fuzzer gets past the framing.
plausible_lines = st.one_of(
    st.sampled_from(
        [
            "",
            "Version: 1",
            "Version: 2",
            "Version: \u00b2",
            "Version: \u0661",
            "Version:",
            "Version: ",
            "Name: x",
            "Name: ",
            "Name:",
            "Fingerprint: 3F2A",
            "Comment: x",
            ": x",
            "QUJD",
            "QQ==",
            "QR==",
            "====",
            "A" * 64,
            "A" * 65,
            BEGIN,
            END,
        ]
    ),
    st.text(alphabet=string.ascii_letters + string.digits + "+/=: -\t\r", max_size=70),
    st.text(max_size=8),
)


@FUZZ
@given(st.lists(plausible_lines, max_size=12), st.sampled_from(["\n", "\r\n"]))
def test_framed_garbage_only_malformed(lines: list[str], newline: str) -> None:
    _only_malformed(newline.join([BEGIN, *lines, END]))


@FUZZ
@given(st.data())
def test_mutated_armour_only_malformed(data: st.DataObject) -> None:
    text = good()
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(text)))
        op = data.draw(st.sampled_from(["replace", "insert", "delete"]))
        piece = data.draw(st.text(min_size=1, max_size=4))
        if op == "replace":
            text = text[:pos] + piece + text[pos + 1 :]
        elif op == "insert":
            text = text[:pos] + piece + text[pos:]
        else:
            text = text[:pos] + text[pos + len(piece) :]
    _only_malformed(text)


def test_control_characters_in_a_header_value_are_refused() -> None:
    """dearmor() accepts nothing armor() could not have written (found by fuzzing)."""
    good = armor("SIGNATURE", b"body", [("Comment", "x y")])
    for bad in ("x\ry", "x\x07y", "x\x00y", "x\u2028y"):
        with pytest.raises(MalformedInput):
            dearmor(good.replace("x y", bad), "SIGNATURE", allowed_headers=frozenset({"Comment"}))
        with pytest.raises(ValueError, match="header"):
            armor("SIGNATURE", b"body", [("Comment", bad)])
