"""Throw-away certificates for the test bed.

One CA per bed signs every server certificate (IdP, Dovecot, Postfix and the
relay's own listeners), so clients only need ``ca_file``. App certificates for
client-assertion logins are separate self-signed RSA certificates, as Entra ID
takes them (msal signs with RS256/PS256, so the key must be RSA).
"""
from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass
from typing import Tuple

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

# Every address a bed server or the relay may listen on.
SERVER_IDENTITIES = ("localhost", "127.0.0.1", "127.0.0.2", "::1")


class CertAuthority:
    def __init__(self, directory: str) -> None:
        self._ca = trustme.CA(organization_name="OAuth Relay test bed")
        self._count = 0
        os.makedirs(directory, exist_ok=True)
        self.ca_file = os.path.join(directory, "ca.pem")
        self._ca.cert_pem.write_to_path(self.ca_file)

    def issue_cert(self, directory: str) -> Tuple[str, str]:
        """Write a server cert (chain) and key into ``directory``; return both paths."""
        os.makedirs(directory, exist_ok=True)
        self._count += 1
        leaf = self._ca.issue_cert(*SERVER_IDENTITIES, common_name="localhost")
        cert_path = os.path.join(directory, "server-%d.crt" % self._count)
        key_path = os.path.join(directory, "server-%d.key" % self._count)
        with open(cert_path, "wb") as handle:
            for pem in leaf.cert_chain_pems:
                handle.write(pem.bytes())
        # Write the key with 0600 from the start; servers read it as root.
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(leaf.private_key_pem.bytes())
        return cert_path, key_path


@dataclass(frozen=True)
class ClientCertificate:
    """An app credential for the client-assertion (certificate) flow."""

    cert_pem: str
    key_pem: str
    sha1_thumbprint: str  # hex, as the Azure portal shows it

    def msal_credential(self) -> dict:
        """The ``client_credential`` dict msal's ConfidentialClientApplication takes."""
        return {"private_key": self.key_pem, "public_certificate": self.cert_pem}


def new_client_certificate(name: str = "bed-app") -> ClientCertificate:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    der = cert.public_bytes(serialization.Encoding.DER)
    return ClientCertificate(cert_pem, key_pem, hashlib.sha1(der).hexdigest().upper())
