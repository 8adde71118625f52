"""What to verify a server's certificate against: the system CAs plus a PEM bundle an admin trusts.

Used by the PBX providers (an account's ``ca_bundle``). Verification is never turned off.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading

import certifi


class NotPem(ValueError):
    """The bundle is not PEM text."""


_trust_files: dict[str, str] = {}
_trust_files_lock = threading.Lock()


def trust_store(ca_bundle: str) -> bool | str:
    """True (the system CAs) without a bundle; else the path of a file with the system CAs and the bundle.

    A bundle becomes one file per distinct content, written once per process, so reconnecting does
    not pile up files. Raises ``NotPem`` for a bundle that is not PEM text.
    """
    pem = (ca_bundle or "").strip()
    if not pem:
        return True
    if "-----BEGIN CERTIFICATE-----" not in pem:
        raise NotPem("the account's trusted CA bundle is not PEM text (-----BEGIN CERTIFICATE-----)")
    digest = hashlib.sha256(pem.encode("utf-8")).hexdigest()[:24]
    with _trust_files_lock:
        path = _trust_files.get(digest)
        if path and os.path.exists(path):
            return path
        with open(certifi.where(), encoding="utf-8") as system_cas:
            combined = system_cas.read().rstrip("\n") + "\n" + pem + "\n"
        path = os.path.join(tempfile.gettempdir(), f"ctihub-ca-{digest}.pem")
        fd, partial = tempfile.mkstemp(prefix="ctihub-ca-", suffix=".partial")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(combined)
        os.replace(partial, path)
        _trust_files[digest] = path
        return path
