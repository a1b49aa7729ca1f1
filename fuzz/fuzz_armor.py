"""atheris harness: the text files people handle (armour and what is inside).

The input is the bytes of a file. It is read as the package reads files
(ASCII for key and identity files, UTF-8 elsewhere; undecodable bytes kept as
lone surrogates, which a ``str`` from elsewhere may hold) and given to:

* ``armor.dearmor`` for each label securechan writes, which raises only
  ``MalformedInput``; an accepted block whose headers ``armor`` can write
  again must come back the same through ``armor`` then ``dearmor``;
* ``PublicIdentity.from_text``, ``DocumentSignature.from_text_unverified``,
  ``ContactCard.from_text`` and ``Fingerprint.parse`` (header values);
* the key file reader: the bytes are written to ``identity.key`` in a
  scratch home and ``Keystore.fingerprint()`` parses it (every check before
  Argon2id, which would cost 64 MiB and a tenth of a second per input).

Only ``SecurechanError`` subclasses may escape.

    python fuzz/fuzz_armor.py -max_total_time=600 fuzz/corpus/armor fuzz/seeds/armor
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from _fixtures import check, run

from securechan import armor
from securechan.documents import DocumentSignature
from securechan.errors import MalformedInput, SecurechanError
from securechan.identity import Keystore
from securechan.identity.keys import Fingerprint, PublicIdentity
from securechan.protocol.address import ContactCard

LABELS = {
    "PUBLIC IDENTITY": frozenset({"Name", "Fingerprint"}),
    "SIGNATURE": frozenset({"Signer", "Fingerprint", "Created", "Comment"}),
    "CONTACT CARD": frozenset({"Name", "Fingerprint"}),
    "ENCRYPTED SECRET KEY": frozenset({"Name", "Fingerprint"}),
}
HOME = Path(tempfile.mkdtemp(prefix="securechan-fuzz-armor-")) / "home"
KEYSTORE = Keystore(HOME)
HOME.mkdir(mode=0o700)


def _dearmor(text: str) -> None:
    for label, allowed in LABELS.items():
        try:
            block = armor.dearmor(text, label, allowed_headers=allowed)
        except MalformedInput:
            continue
        try:
            again = armor.armor(label, block.body, list(block.headers.items()))
        except ValueError:
            # A header value armor() would not write (a CR or other control
            # character inside it): see RESULTS.md, finding A1.
            continue
        back = armor.dearmor(again, label, allowed_headers=allowed)
        check(back == block, f"{label}: armour round trip changed the block")


def test_one_input(data: bytes) -> None:
    text = data.decode("utf-8", "surrogateescape")
    _dearmor(text)
    for parse in (
        PublicIdentity.from_text,
        DocumentSignature.from_text_unverified,
        ContactCard.from_text,
        Fingerprint.parse,
    ):
        with contextlib.suppress(SecurechanError):
            parse(text)
    KEYSTORE.key_path.write_bytes(data)
    with contextlib.suppress(SecurechanError):
        KEYSTORE.fingerprint()


if __name__ == "__main__":
    run(test_one_input)
