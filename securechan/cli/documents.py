"""``securechan sign`` and ``securechan verify``: detached signatures."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, BinaryIO

import click

import securechan
from securechan.cli.completion import complete_contact_or_self
from securechan.cli.core import (
    _App,
    _columns,
    _emit_json,
    _iso,
    _json_option,
    _progress,
    _read_text,
    pass_app,
)
from securechan.errors import NotFound, UsageError
from securechan.terminal_text import block, inline


def _open_document(path: Path) -> tuple[BinaryIO, int]:
    f = open(path, "rb")  # noqa: SIM115 - closed by the caller
    return f, os.fstat(f.fileno()).st_size


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Default FILE.sig."
)
@click.option("--comment", help="A one-line comment, signed with the document.")
@_json_option
@pass_app
def sign(app: _App, file: Path, output: Path | None, comment: str | None, as_json: bool) -> None:
    """Write a detached signature of FILE to FILE.sig."""
    from securechan.cli.passphrase import unlock
    from securechan.identity._files import atomic_write

    ident = unlock(app, app.keystore.unlock)  # three tries at a prompt
    f, size = _open_document(file)
    with f, _progress(size, "Signing") as progress:
        sig = securechan.sign_document(
            ident, f, now=int(time.time()), comment=comment, progress=progress
        )
    out = output if output is not None else file.with_name(file.name + ".sig")
    atomic_write(out, sig.to_text().encode("utf-8"), replace=True, mode=0o644)
    if as_json:
        from securechan.cli.results import DocumentSigned

        signed = DocumentSigned(signature=str(out), size=sig.statement.size, signer=ident.name)
        _emit_json(signed.to_json())
        return
    click.echo(
        f"Signed {inline(str(file))} ({size} bytes) as {inline(ident.name)}: {inline(str(out))}",
        err=True,
    )


def _named_signer(app: _App, name: str) -> tuple[securechan.PublicIdentity, bool]:
    """The contact NAME (and whether it is verified), else your own identity
    when NAME is your name: you check your own signatures too. A contact
    pinned under your name wins, as before; contacts never hold your key."""
    from securechan.errors import ContactNotFound

    store = app.keystore
    try:
        c = store.contacts.get(name)
    except ContactNotFound:
        if store.has_identity():
            own = store.public_identity()
            if own.name == name:
                return own, True
        raise
    return c.identity, c.verified


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--sig", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Default FILE.sig."
)
@click.option(
    "--from",
    "from_name",
    shell_complete=complete_contact_or_self,
    help="The contact (or you, by your name) who should have signed.",
)
@click.option("--key", type=click.File("rb"), help="A public identity file instead.")
@_json_option
@pass_app
def verify(
    app: _App, file: Path, sig: Path | None, from_name: str | None, key: Any, as_json: bool
) -> None:
    """Check that FILE was signed by --from NAME (or --key PUBFILE)."""
    if (from_name is None) == (key is None):
        raise UsageError("give exactly one of --from NAME or --key PUBFILE")
    sig_path = sig if sig is not None else file.with_name(file.name + ".sig")
    try:
        sig_text = _read_text(sig_path, str(sig_path))
    except FileNotFoundError:
        raise NotFound(f"no signature file {sig_path} (use --sig)") from None
    signature = securechan.DocumentSignature.from_text_unverified(sig_text)
    verified_contact = True
    if from_name is not None:
        signer, verified_contact = _named_signer(app, from_name)
    else:
        signer = securechan.PublicIdentity.from_text(_read_text(key, "the --key file"))
    f, size = _open_document(file)
    with f, _progress(size, "Verifying") as progress:
        st = securechan.verify_document(signer, f, signature, progress=progress)
    from securechan.cli.results import DocumentVerified

    result = DocumentVerified(
        signer=signer.name,
        fingerprint=str(st.signer_fingerprint),
        created=st.created,
        comment=st.comment,
        contact_verified=verified_contact if from_name is not None else None,
    )
    if as_json:
        _emit_json(result.to_json())
    else:
        click.echo(
            f"Good signature by {inline(signer.name)} ({st.signer_fingerprint}), "
            f"made {_iso(st.created)}"
        )
        if st.comment is not None:  # the signer's text: after the verdict, marked
            click.echo(f"Signed comment: {block(st.comment, width=_columns(), indent=16)}")
    if not verified_contact:
        shown = inline(str(from_name))
        click.echo(
            f"securechan: warning: {shown} is not verified; compare safety numbers "
            f"('securechan contact show {shown}')",
            err=True,
        )
