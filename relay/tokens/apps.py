"""Building msal applications from the relay's app settings: authority, scopes, credentials."""

from __future__ import annotations

import os
import re
from typing import List, Optional, Union

import msal
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from relay.config.models import AppConfig, CloudConfig, Config
from relay.tokens import keyfile
from relay.tokens.errors import TokenStoreError

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
_PEM_KEY = re.compile(rb"-----BEGIN (?:RSA |EC |ENCRYPTED )?PRIVATE KEY-----.+?"
                      rb"-----END (?:RSA |EC |ENCRYPTED )?PRIVATE KEY-----", re.S)


def delegated_scopes(cloud: CloudConfig) -> List[str]:
    # msal adds openid, profile and offline_access itself (and refuses them if we pass them).
    return [cloud.resource + "IMAP.AccessAsUser.All", cloud.resource + "POP.AccessAsUser.All",
            cloud.resource + "SMTP.Send"]


def app_only_scopes(cloud: CloudConfig) -> List[str]:
    return [cloud.app_only_resource + ".default"]


def scopes_for(config: Config, app: AppConfig, flow: str) -> List[str]:
    return app_only_scopes(config.cloud) if flow == "client_credentials" else delegated_scopes(config.cloud)


def authority_for(config: Config, app: AppConfig) -> str:
    if app.authority:
        return app.authority.rstrip("/")
    return f"{config.cloud.login_host.rstrip('/')}/{app.tenant}"


def _read_secret_file(path: str, what: str) -> bytes:
    # The relay's service group may read these (root:oauth-relay 0640); others may not.
    try:
        keyfile.check_private(path, what, allow_group=True)
        with open(path, "rb") as handle:
            return handle.read(1 << 20)
    except OSError as exc:
        raise TokenStoreError(f"cannot read {what} {path}: {exc.strerror}")


def certificate_credential(path: str) -> dict:
    """msal wants the private key and the SHA-1 thumbprint of the certificate."""
    data = _read_secret_file(path, "certificate file")
    cert_pem, key_pem = _PEM_CERT.search(data), _PEM_KEY.search(data)
    if not cert_pem or not key_pem:
        raise TokenStoreError(f"certificate file {path} must hold a PEM certificate and its "
                              "unencrypted private key")
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.group(0))
        key = serialization.load_pem_private_key(key_pem.group(0), password=None)
    except (ValueError, TypeError) as exc:
        raise TokenStoreError(f"certificate file {path} cannot be read: {exc}")
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode("ascii")
    return {"private_key": private, "thumbprint": cert.fingerprint(hashes.SHA1()).hex().upper()}


def client_credential(app: AppConfig) -> Union[str, dict, None]:
    if app.client_secret_file:
        secret = _read_secret_file(app.client_secret_file, "client secret file").decode("utf-8").strip()
        if not secret:
            raise TokenStoreError(f"client secret file {app.client_secret_file} is empty")
        return secret
    if app.certificate_file:
        return certificate_credential(app.certificate_file)
    return None


def _file_version(path: str) -> Optional[str]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"  # ctime: chmod too


def _thumbprint(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as handle:
            found = _PEM_CERT.search(handle.read(1 << 20))
        cert = x509.load_pem_x509_certificate(found.group(0)) if found else None
    except (OSError, ValueError, TypeError):
        return None
    return cert.fingerprint(hashes.SHA1()).hex().upper() if cert else None


def settings_fingerprint(config: Config, app: AppConfig) -> dict:
    """The app settings a recorded failure was met with, and never a secret: which app, where
    it signs in, how, and which credential file (in which version) it presented. A failure
    recorded under other settings says nothing about these ones."""
    fingerprint = {"client_id": app.client_id, "tenant": app.tenant, "authority": authority_for(config, app),
                   "type": app.type, "flow": app.flow, "client_secret_file": app.client_secret_file,
                   "certificate_file": app.certificate_file}
    if app.confidential and (app.client_secret_file or app.certificate_file):
        # Rewritten in place (a rotated secret, a fixed permission), the file is another credential.
        fingerprint["credential_file"] = _file_version(app.client_secret_file or app.certificate_file)
    if app.confidential and app.certificate_file and not app.client_secret_file:
        fingerprint["certificate_thumbprint"] = _thumbprint(app.certificate_file)
    return fingerprint


class ConfidentialApp(msal.ConfidentialClientApplication):
    """Entra ID takes the device code flow from a confidential app too (with its secret),
    but msal offers it only on public ones: borrow those methods."""

    DEVICE_FLOW_CORRELATION_ID = getattr(msal.PublicClientApplication, "DEVICE_FLOW_CORRELATION_ID",
                                         "_correlation_id")
    initiate_device_flow = msal.PublicClientApplication.initiate_device_flow
    acquire_token_by_device_flow = msal.PublicClientApplication.acquire_token_by_device_flow


def build_app(config: Config, app: AppConfig, cache: msal.SerializableTokenCache, http_client):
    """A public or confidential msal application; this fetches the authority's metadata."""
    kwargs = dict(authority=authority_for(config, app), token_cache=cache, http_client=http_client)
    if app.authority:
        kwargs["instance_discovery"] = False  # a private authority (tests, sovereign proxies)
    if app.confidential:
        return ConfidentialApp(app.client_id, client_credential=client_credential(app), **kwargs)
    return msal.PublicClientApplication(app.client_id, **kwargs)
