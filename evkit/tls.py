"""TLS contexts, both sides: the broadcaster's certificate, and what clients trust.

:func:`server_context` turns the settings' ``ssl_certfile``, ``ssl_keyfile`` and
``ssl_ca_certs`` into the context the broadcaster listens with (``wss://`` and
``https://`` on one port; with a CA, clients must present a certificate it signed).
:func:`client_context` is what evkit's clients connect to ``wss://`` with: the
system's CAs by default, an :class:`ssl.SSLContext` of the caller's, or a CA file
(a private CA, a self-signed certificate), with a client certificate when the server
asks for one.

Every file problem is a :class:`ValueError` naming the setting and the path, never
OpenSSL's bare ``PEM lib``. This module must not open sockets.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

__all__ = ["SSLOption", "client_context", "server_context"]

#: What evkit's clients take as ``ssl=``: a context, or the path of a CA file (PEM).
SSLOption = ssl.SSLContext | str | os.PathLike[str] | None


def _existing(path: str | os.PathLike[str], what: str) -> str:
    """``path`` as a string once it is a readable file; ``what`` names it in the error."""
    file = Path(path).expanduser()
    if not file.is_file():
        reason = "is a directory" if file.is_dir() else "does not exist"
        raise ValueError(f"{what}: {str(file)!r} {reason}")
    if not os.access(file, os.R_OK):
        raise ValueError(f"{what}: {str(file)!r} is not readable by this user")
    return str(file)


def _load_chain(
    context: ssl.SSLContext, certfile: str, keyfile: str | None, names: tuple[str, str]
) -> None:
    cert = _existing(certfile, names[0])
    key = _existing(keyfile, names[1]) if keyfile else None
    text = Path(cert).read_bytes()
    if b"-----BEGIN CERTIFICATE-----" not in text:
        raise ValueError(f"{names[0]}: {cert!r} holds no PEM certificate")
    if key is None and b"PRIVATE KEY-----" not in text:
        raise ValueError(
            f"{names[0]}: {cert!r} holds no private key: give {names[1]} too, or put the "
            "key in the same file"
        )
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        where = f"{names[0]}={cert!r}" + (f" and {names[1]}={key!r}" if key else "")
        reason = "the key does not belong to the certificate"
        if exc.reason and exc.reason != "KEY_VALUES_MISMATCH":
            reason = f"{exc.reason.replace('_', ' ').lower()} (is the key a PEM private key?)"
        raise ValueError(f"cannot load the certificate from {where}: {reason}") from None


def _load_ca(context: ssl.SSLContext, cafile: str | os.PathLike[str], name: str) -> None:
    path = _existing(cafile, name)
    try:
        context.load_verify_locations(cafile=path)
    except ssl.SSLError:
        raise ValueError(f"{name}: {path!r} holds no PEM CA certificate") from None


def server_context(
    certfile: str | None, keyfile: str | None = None, ca_certs: str | None = None
) -> ssl.SSLContext | None:
    """The broadcaster's TLS context, or None without a certificate (plain ``ws://``).

    Raises:
        ValueError: a file is missing or unreadable, is not PEM, or the key does not
            match the certificate (the message names the setting and the path).
    """
    if not certfile:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _load_chain(context, certfile, keyfile, ("ssl_certfile", "ssl_keyfile"))
    if ca_certs:
        _load_ca(context, ca_certs, "ssl_ca_certs")
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    ssl_option: SSLOption = None,
    url: str | None = None,
    *,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> ssl.SSLContext | None:
    """The context a client connects with; None means websockets' default for ``wss://``
    (the system's CAs) and nothing for ``ws://``.

    ``ssl_option`` is a context (used as is), or the path of a PEM file of the CAs to
    trust instead of the system's (a private CA, or a self-signed certificate itself).
    ``certfile`` / ``keyfile``: a client certificate, for a server that asks for one.

    Raises:
        ValueError: a TLS option for a ``ws://`` URL, or a file that is missing, not PEM,
            or a key that does not match its certificate.
    """
    if ssl_option is None and certfile is None:
        return None
    if url is not None and not url.startswith("wss://"):
        raise ValueError(
            f"TLS options were given for {url.split('?', 1)[0]!r}, which is not a wss:// "
            "URL; use wss:// for a server with TLS, or drop the TLS options"
        )
    if isinstance(ssl_option, ssl.SSLContext):
        if certfile is not None:
            raise ValueError("give a client certificate inside your SSLContext, or a CA file")
        return ssl_option
    if ssl_option is None:
        context = ssl.create_default_context()
    else:
        # Only the CAs of the file: a private CA is not mixed with the system's.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies names and chains
        _load_ca(context, ssl_option, "CA file")
    if certfile is not None:
        _load_chain(context, certfile, keyfile, ("client certificate", "client key"))
    return context
