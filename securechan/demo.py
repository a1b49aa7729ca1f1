"""``securechan demo``: what exists so far, shown end to end on this machine.

Two delegations ("tehran" and "washington") get identities in their own
home folders, exchange public identity files, compare safety numbers, and
one signs a draft communiqué that the other verifies; a tampered copy, a
signature by an impostor's key and a wrong passphrase are each refused.

The scenario is plain library calls that return :class:`Step` records; the
CLI decides how to show them. Every step reports whether it went as a secure
system must (``ok``), so a test can assert the whole run.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from securechan.documents import DocumentSignature, sign_document, verify_document
from securechan.errors import BadPassphrase, BadSignature, KeyChanged
from securechan.identity import Identity, Keystore, PublicIdentity
from securechan.primitives import KdfParams, random_bytes

__all__ = ["COMMUNIQUE", "Step", "run_demo"]

COMMUNIQUE = (
    b"DRAFT JOINT COMMUNIQUE\n"
    b"The two delegations met through the good offices of the mediator and\n"
    b"agreed to resume technical talks within thirty days.\n"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """One step of the demo: a title, what was seen, and whether it held."""

    title: str
    ok: bool
    details: dict[str, str] = field(default_factory=dict)
    attack: bool = False


def run_demo(folder: Path, *, kdf: KdfParams) -> Iterator[Step]:
    """Run the scenario in ``folder`` (which must be empty or absent)."""
    folder.mkdir(parents=True, exist_ok=True)
    passphrases = {n: random_bytes(18).hex() for n in ("tehran", "washington")}
    stores = {n: Keystore(folder / n) for n in passphrases}
    idents: dict[str, Identity] = {}
    for name, store in stores.items():
        t0 = time.perf_counter()
        idents[name] = store.create(name, passphrases[name], kdf=kdf)
        yield Step(
            title=f"{name}: identity created (ML-DSA-65 + Ed25519), key file encrypted",
            ok=store.has_identity(),
            details={
                "fingerprint": str(idents[name].fingerprint),
                "home": str(store.home),
                "seconds": f"{time.perf_counter() - t0:.2f}",
            },
        )

    # Each side receives the other's public identity file (say, by courier).
    for me, other in (("tehran", "washington"), ("washington", "tehran")):
        text = stores[other].public_path.read_text("ascii")
        contact = stores[me].contacts.add(PublicIdentity.from_text(text))
        yield Step(
            title=f"{me}: pinned {other}'s public identity",
            ok=contact.fingerprint == idents[other].fingerprint and not contact.verified,
            details={"file": str(stores[other].public_path), "bytes": str(len(text))},
        )

    sn_t = stores["tehran"].contacts.safety_number("washington", idents["tehran"].public)
    sn_w = stores["washington"].contacts.safety_number("tehran", idents["washington"].public)
    yield Step(
        title="both sides compute the same safety number",
        ok=sn_t == sn_w,
        details={"digits": str(sn_t), "words": sn_t.words_text},
    )
    for me, other, sn in (("tehran", "washington", sn_w), ("washington", "tehran", sn_t)):
        # Each side types in what the other read out over the phone.
        c = stores[me].contacts.verify(other, str(sn), idents[me].public)
        yield Step(title=f"{me}: marked {other} verified", ok=c.verified)

    unlocked = stores["tehran"].unlock(passphrases["tehran"])
    sig = sign_document(
        unlocked, io.BytesIO(COMMUNIQUE), now=int(time.time()), comment="draft communique, rev 3"
    )
    sig_text = sig.to_text()
    yield Step(
        title="tehran: signed the draft communique (detached signature)",
        ok=True,
        details={
            "document_bytes": str(len(COMMUNIQUE)),
            "signature_file_bytes": str(len(sig_text)),
        },
    )
    parsed = DocumentSignature.from_text_unverified(sig_text)
    tehran_pinned = stores["washington"].contacts.get("tehran").identity
    st = verify_document(tehran_pinned, io.BytesIO(COMMUNIQUE), parsed)
    yield Step(
        title="washington: the signature is good, by the verified contact tehran",
        ok=st.signer_fingerprint == idents["tehran"].fingerprint,
        details={"comment": st.comment or ""},
    )

    tampered = COMMUNIQUE.replace(b"thirty", b"ninety")
    yield _refused(
        "attack: a mediator changes 'thirty' to 'ninety' in the communique",
        lambda: verify_document(tehran_pinned, io.BytesIO(tampered), parsed),
        BadSignature,
    )

    impostor = Identity.generate("tehran", now=int(time.time()))
    forged = sign_document(impostor, io.BytesIO(tampered), now=int(time.time()))
    yield _refused(
        "attack: an impostor signs the changed text with a new 'tehran' key",
        lambda: verify_document(tehran_pinned, io.BytesIO(tampered), forged),
        BadSignature,
    )
    yield _refused(
        "attack: the impostor's identity is offered to washington as 'tehran'",
        lambda: stores["washington"].contacts.add(impostor.public),
        KeyChanged,
    )
    yield _refused(
        "attack: a thief with tehran's disk tries a guessed passphrase",
        lambda: stores["tehran"].unlock("password123"),
        BadPassphrase,
    )


def _refused(title: str, action: Callable[[], object], expected: type[Exception]) -> Step:
    try:
        action()
    except expected as e:
        return Step(title=title, ok=True, attack=True, details={"refused": str(e)})
    return Step(title=title, ok=False, attack=True, details={"refused": "NOT REFUSED"})
