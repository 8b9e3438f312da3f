"""The certificate authorities a sandbox trusts beyond its template's: /init's `caBundle`
added to the system's bundle, once however often /init repeats it (after every restore)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

# Where the common distributions keep the bundle that OpenSSL, curl, pip and git read:
# Debian, Ubuntu and Alpine; Fedora and RHEL.
SYSTEM_BUNDLES = (
    Path("/etc/ssl/certs/ca-certificates.crt"),
    Path("/etc/pki/tls/certs/ca-bundle.crt"),
)


def add_to_system_bundle(pem: str, bundles: tuple[Path, ...] = SYSTEM_BUNDLES) -> Path | None:
    """Append the PEM certificates `pem` to the first system bundle there is, unless it
    holds them already; the bundle written, or None (no bundle: nothing trusts a CA
    there, so there is nothing to add to). Written whole and renamed into place: a
    reader never sees half a bundle."""
    pem = pem.strip()
    if not pem:
        return None
    for bundle in bundles:
        try:
            text = bundle.read_text()
        except FileNotFoundError:
            continue
        if pem in text:
            return bundle
        target = bundle.resolve()  # Debian's may be a link into the package's files
        partial = target.with_name(f".{target.name}.hearth")
        try:
            partial.write_text(f"{text.rstrip()}\n{pem}\n" if text.strip() else f"{pem}\n")
            os.chmod(partial, 0o644)
            os.replace(partial, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
        return bundle
    return None
