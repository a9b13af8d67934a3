"""TLS for the relay's own listeners: the admin's certificate, or a self-signed one made once."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from typing import Tuple

from relay.atomic_file import write_atomically
from relay.config.models import Config


def auto_certificate(state_dir: str) -> Tuple[str, str]:
    """A self-signed certificate for localhost in <state_dir>/tls/, made on first use."""
    directory = os.path.join(state_dir, "tls")
    cert_path, key_path = os.path.join(directory, "relay.crt"), os.path.join(directory, "relay.key")
    if os.path.exists(cert_path) and os.path.exists(key_path):
        return cert_path, key_path
    os.makedirs(directory, mode=0o700, exist_ok=True)
    cert_pem, key_pem = _self_signed()
    write_atomically(key_path, key_pem)
    write_atomically(cert_path, cert_pem, mode=0o644)
    return cert_path, key_path


def _self_signed() -> Tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "OAuth Relay (self-signed)")])
    now = datetime.datetime.now(datetime.timezone.utc)
    san = x509.SubjectAlternativeName([
        x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1"))])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(san, critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def server_context(config: Config) -> ssl.SSLContext:
    if config.tls.auto:
        cert_path, key_path = auto_certificate(config.state_dir)
    else:
        cert_path, key_path = config.tls.certificate, config.tls.key
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # Legacy clients (Outlook 2010, old scanners) may only speak TLS 1.0/1.1 on the local hop;
    # OpenSSL's security level decides what is allowed, the relay does not narrow it further.
    context.load_cert_chain(cert_path, key_path)
    return context
