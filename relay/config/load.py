"""Read relay.yaml and users.yaml into frozen models, or raise ConfigInvalid with every error."""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
from typing import Dict, List, Optional, Tuple

from relay.config import clouds
from relay.config.errors import ConfigError, ConfigInvalid
from relay.config.models import (
    APP_TYPES, FLOWS, JOURNAL_LEVELS, LISTENER_SECURITY, PROTOCOLS, UPSTREAM_SECURITY, AppConfig,
    AuthPolicy, Config, JournalConfig, Limits, Listener, TlsConfig, TokenConfig, UpstreamConfig,
    UpstreamEndpoint, User, Users)
from relay.config.reader import Reader
from relay.config.strict_yaml import parse

DEFAULT_CONFIG = "/etc/oauth-relay/relay.yaml"
TOP_KEYS = ("journal", "state_dir", "runtime_dir", "users", "tls", "cloud", "upstream", "apps",
            "listeners", "auth", "limits", "tokens", "hostname")
DEFAULT_LISTENERS = [
    {"protocol": "smtp", "listen": "127.0.0.1:25", "security": "starttls"},
    {"protocol": "smtp", "listen": "127.0.0.1:465", "security": "tls"},
    {"protocol": "pop3", "listen": "127.0.0.1:110", "security": "starttls"},
    {"protocol": "pop3", "listen": "127.0.0.1:995", "security": "tls"},
    {"protocol": "imap", "listen": "127.0.0.1:143", "security": "starttls"},
    {"protocol": "imap", "listen": "127.0.0.1:993", "security": "tls"},
]
APP_FLOWS = {"public": ("device_code", "auth_code"),
             "confidential": ("device_code", "auth_code", "client_credentials")}


def default_config_path() -> str:
    return os.environ.get("OAUTH_RELAY_CONFIG") or DEFAULT_CONFIG


def read_document(path: str):
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise ConfigInvalid([ConfigError(path, 1, 1, "", f"cannot read: {exc.strerror}")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[:exc.start]
        line, column = before.count(b"\n") + 1, exc.start - (before.rfind(b"\n") + 1) + 1
        raise ConfigInvalid([ConfigError(path, line, column, "", f"not UTF-8 text: {exc.reason}")])
    return parse(text, path)


def load_config(path: str, with_users: bool = True, check_files: bool = False,
                running: Optional[Config] = None) -> Tuple[Config, Optional[Users]]:
    """Load relay.yaml (and its users file); errors in both files are reported together.

    check_files: also read the files the settings name (app credentials, the TLS certificate
    and key), as this process, so a file the relay cannot use is an error now and not at the
    first login. running: the configuration the relay serves; settings a reload cannot change
    are errors."""
    reader = Reader(read_document(path))
    base = os.path.dirname(os.path.abspath(path))
    config = _build_config(reader, os.path.abspath(path), base)
    if config is not None and check_files:
        _check_files(reader, config)
    if config is not None and running is not None:
        _check_restart_only(reader, config, running)
    errors = list(reader.errors)
    users = None
    if with_users and config is not None:
        try:
            users = load_users(config.users_file, config.apps)
        except ConfigInvalid as exc:
            errors.extend(exc.errors)
    if errors:
        raise ConfigInvalid(errors)
    return config, users


def _resolve(base: str, value: Optional[str]) -> Optional[str]:
    return None if value is None else os.path.normpath(os.path.join(base, os.path.expanduser(value)))


def _build_config(r: Reader, path: str, base: str) -> Optional[Config]:
    if r.document.data is None:
        r.document.data = {}
    if not isinstance(r.document.data, dict):
        r.error((), "the file must be a mapping of settings")
        return None
    r.mapping((), TOP_KEYS)
    cloud_name = r.string(("cloud",), "worldwide", choices=tuple(clouds.CLOUDS)) or "worldwide"
    config = Config(
        path=path,
        journal=_journal(r, base),
        state_dir=_resolve(base, r.string(("state_dir",), "/var/lib/oauth-relay")),
        runtime_dir=_resolve(base, r.string(("runtime_dir",), "/run/oauth-relay")),
        users_file=_resolve(base, r.string(("users",), "users.yaml")),
        tls=_tls(r, base),
        cloud=clouds.cloud_config(cloud_name),
        upstream=_upstream(r, base, cloud_name),
        apps=_apps(r, base, cloud_name),
        listeners=_listeners(r),
        auth=_auth(r),
        limits=_limits(r),
        tokens=_tokens(r, base),
        hostname=r.string(("hostname",), "localhost"),
    )
    return config


def _journal(r: Reader, base: str) -> JournalConfig:
    r.mapping(("journal",), ("level", "file"))
    return JournalConfig(level=r.string(("journal", "level"), "info", choices=JOURNAL_LEVELS),
                         file=_resolve(base, r.string(("journal", "file"), None)))


def _tls(r: Reader, base: str) -> TlsConfig:
    value = r.value(("tls",), "auto")
    if value == "auto":
        return TlsConfig()
    if not isinstance(value, dict):
        r.error(("tls",), "must be `auto` or a mapping with certificate and key")
        return TlsConfig()
    r.mapping(("tls",), ("certificate", "key"))
    return TlsConfig(certificate=_resolve(base, r.string(("tls", "certificate"))),
                     key=_resolve(base, r.string(("tls", "key"))))


def _upstream(r: Reader, base: str, cloud_name: str) -> UpstreamConfig:
    r.mapping(("upstream",), PROTOCOLS + ("ca_file", "connect_timeout", "login_timeout"))
    endpoints = clouds.default_upstream(cloud_name)
    for protocol in PROTOCOLS:
        where = ("upstream", protocol)
        r.mapping(where, ("host", "port", "security"))
        default = endpoints[protocol]
        endpoints[protocol] = UpstreamEndpoint(
            host=r.string(where + ("host",), default.host),
            port=r.integer(where + ("port",), default.port, 1, 65535),
            security=r.string(where + ("security",), default.security, choices=UPSTREAM_SECURITY))
    return UpstreamConfig(
        ca_file=_resolve(base, r.string(("upstream", "ca_file"), None)),
        connect_timeout=r.number(("upstream", "connect_timeout"), 20.0, 1, 600),
        login_timeout=r.number(("upstream", "login_timeout"), 30.0, 1, 600),
        **endpoints)


# Entra ID's Application (client) ID: a GUID. A name or the secret's id there only fails later,
# at the first sign-in, as AADSTS700016 ("application not found in the directory").
GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
APP_KEYS = ("client_id", "tenant", "type", "flow", "client_secret_file", "certificate_file",
            "authority", "redirect_port")


def _apps(r: Reader, base: str, cloud_name: str) -> Dict[str, AppConfig]:
    apps = {}
    for name in r.mapping(("apps",), r.value(("apps",), {}) or {}):
        where = ("apps", name)
        if not isinstance(r.value(where), dict):
            r.error(where, "must be a mapping (client_id, tenant, type, flow, ...)")
            continue
        r.mapping(where, APP_KEYS)
        app_type = r.string(where + ("type",), choices=APP_TYPES)
        flow = r.string(where + ("flow",), "device_code", choices=FLOWS)
        app = AppConfig(
            name=name, client_id=r.string(where + ("client_id",)) or "",
            tenant=r.string(where + ("tenant",), "organizations"),
            type=app_type or "public", flow=flow or "device_code",
            client_secret_file=_resolve(base, r.string(where + ("client_secret_file",), None)),
            certificate_file=_resolve(base, r.string(where + ("certificate_file",), None)),
            authority=r.string(where + ("authority",), None),
            redirect_port=r.integer(where + ("redirect_port",), 0, 0, 65535))
        _check_app(r, where, app, app_type)
        apps[name] = app
    return apps


def _check_app(r: Reader, where, app: AppConfig, app_type: Optional[str]) -> None:
    if app.client_id and not GUID.match(app.client_id):
        r.error(where + ("client_id",), "must be the app's Application (client) ID, a GUID like "
                                        "11111111-2222-3333-4444-555555555555 (Entra admin center: App "
                                        f"registrations, the app, Overview); got {app.client_id!r}")
    # Mixing up public and confidential apps is the classic AADSTS700025 / AADSTS7000218.
    has_credential = app.client_secret_file or app.certificate_file
    if app_type == "public" and has_credential:
        r.error(where + ("type",), "a public app must not have a client secret or certificate "
                                   "(Entra ID answers AADSTS700025); use type: confidential")
    if app_type == "confidential" and not has_credential:
        r.error(where + ("type",), "a confidential app needs client_secret_file or certificate_file "
                                   "(Entra ID answers AADSTS7000218 without one)")
    if app.client_secret_file and app.certificate_file:
        r.error(where + ("certificate_file",), "give either client_secret_file or certificate_file, not both")
    if app_type and app.flow not in APP_FLOWS[app_type]:
        r.error(where + ("flow",), f"flow {app.flow} needs a confidential app (client secret or certificate)")


def _check_files(r: Reader, config: Config) -> None:
    for name, app in config.apps.items():
        for setting in ("client_secret_file", "certificate_file"):
            if getattr(app, setting):
                _check_credential(r, ("apps", name, setting), getattr(app, setting))
    _check_tls(r, config)


def _readable(r: Reader, where, path: str) -> bool:
    # Reading, not stat or access(): check-config runs as the service user in ExecStartPre,
    # and what this process can read is what the relay will be able to read.
    try:
        with open(path, "rb") as handle:
            handle.read(1)
        return True
    except OSError as exc:
        r.error(where, f"cannot read {path}: {exc.strerror}")
        return False


def _check_credential(r: Reader, where, path: str) -> None:
    """What the first sign-in with this secret or certificate would find wrong."""
    if not _readable(r, where, path):
        return
    # Imported here: only a confidential app needs msal (and relay.tokens imports relay.config).
    from relay.tokens import apps, keyfile
    from relay.tokens.errors import TokenStoreError

    what = "client secret file" if where[-1] == "client_secret_file" else "certificate file"
    try:
        # The token code's own rule: its group may read it (root:oauth-relay 0640), others not.
        keyfile.check_private(path, what, allow_group=True)
        if where[-1] == "client_secret_file":
            with open(path, "rb") as handle:
                if not handle.read(1 << 20).decode("utf-8").strip():
                    r.error(where, f"{what} {path} is empty")
        else:
            apps.certificate_credential(path)
    except TokenStoreError as exc:
        r.error(where, str(exc))
    except UnicodeDecodeError:
        r.error(where, f"{what} {path} is not UTF-8 text")
    except OSError as exc:
        r.error(where, f"cannot read {path}: {exc.strerror}")


def _check_tls(r: Reader, config: Config) -> None:
    if config.tls.auto:
        # Made on the first start, so a missing one is fine; one already made must still load.
        directory = os.path.join(config.state_dir, "tls")
        cert, key = os.path.join(directory, "relay.crt"), os.path.join(directory, "relay.key")
        if os.path.exists(cert) and os.path.exists(key):
            problem = _tls_problem(cert, key)
            if problem:
                r.error(("tls",), f"the automatic certificate cannot be used: {problem[1]} "
                                  f"(remove {cert} and {key} to have new ones made)")
        return
    cert, key = config.tls.certificate, config.tls.key
    readable = [_readable(r, ("tls", which), path) for which, path in (("certificate", cert), ("key", key)) if path]
    if cert and key and all(readable):
        problem = _tls_problem(cert, key)
        if problem:
            r.error(("tls", problem[0]), problem[1])


def _tls_problem(cert: str, key: str) -> Optional[Tuple[str, str]]:
    """(setting, message) if the listeners could not load this certificate and key."""
    asked = []

    def no_passphrase():
        asked.append(True)      # never prompt: the relay has no one to type a passphrase
        return b""

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=no_passphrase)
        return None
    except OSError as exc:      # ssl.SSLError is an OSError too
        failure = exc
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert)
    except (OSError, ValueError):
        return "certificate", f"{cert} holds no PEM certificate"
    if asked:
        return "key", (f"{key} is protected by a passphrase; the relay needs the key without one "
                       f"(openssl pkey -in {key} -out NEW.key)")
    if "KEY_VALUES_MISMATCH" in str(failure):
        return "key", f"{key} is not the private key of the certificate {cert}"
    detail = f" ({failure.reason})" if getattr(failure, "reason", None) else ""
    return "key", f"{key} holds no PEM private key that the relay can use{detail}"


RESTART_ONLY = {
    "state_dir": "the token store, its key and the `tls: auto` certificate are in {old}; move them to "
                 "{new} first, or every signed-in account must sign in again",
    "runtime_dir": "the running relay's pid and status files are in {old}",
}


def _check_restart_only(r: Reader, config: Config, running: Config) -> None:
    """A reload to a new state_dir would serve an empty token store with a new key: every
    signed-in account would look lost. These settings change with a restart only."""
    for setting, why in RESTART_ONLY.items():
        old, new = getattr(running, setting), getattr(config, setting)
        if old != new:
            r.error((setting,), f"changed from {old} to {new}: this needs a restart, not a reload "
                                f"({why.format(old=old, new=new)}): systemctl restart oauth-relay, "
                                f"or set it back to {old}")


LISTENER_KEYS = ("protocol", "listen", "security", "workers")


def _listeners(r: Reader) -> Tuple[Listener, ...]:
    entries = r.value(("listeners",), None)
    if entries is None:
        r.document.data["listeners"] = entries = DEFAULT_LISTENERS
    if not isinstance(entries, list):
        r.error(("listeners",), "must be a list of {protocol, listen, security}")
        return ()
    listeners: List[Listener] = []
    for index, _ in enumerate(entries):
        where = ("listeners", index)
        if not isinstance(r.value(where), dict):
            r.error(where, "must be a mapping with protocol, listen and security")
            continue
        r.mapping(where, LISTENER_KEYS)
        listener = _listener(r, where)
        if listener is None:
            continue
        clash = _clashing(listener, listeners)
        if clash is not None:
            r.error(where + ("listen",), f"{listener.address} is already used by listeners[{clash}] "
                                         f"({listeners[clash].address})")
            continue
        listeners.append(listener)
    return tuple(listeners)


def _clashing(listener: Listener, earlier: List[Listener]) -> Optional[int]:
    """The index of an earlier listener that holds the same port (a wildcard holds all addresses)."""
    family = ipaddress.ip_address(listener.host).version
    for index, other in enumerate(earlier):
        if other.port != listener.port or ipaddress.ip_address(other.host).version != family:
            continue
        if other.host == listener.host or ipaddress.ip_address(other.host).is_unspecified \
                or ipaddress.ip_address(listener.host).is_unspecified:
            return index
    return None


def _listener(r: Reader, where) -> Optional[Listener]:
    protocol = r.string(where + ("protocol",), choices=PROTOCOLS)
    listen = r.string(where + ("listen",))
    security = r.string(where + ("security",), choices=LISTENER_SECURITY)
    workers = r.integer(where + ("workers",), 1, 1, 64)
    address = _parse_address(r, where + ("listen",), listen) if listen else None
    if None in (protocol, security, address, workers):
        return None
    return Listener(protocol=protocol, host=address[0], port=address[1], security=security, workers=workers)


def _parse_address(r: Reader, where, text: str) -> Optional[Tuple[str, int]]:
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        r.error(where, f"must be ADDRESS:PORT, e.g. 127.0.0.1:143 (got {text!r})")
        return None
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host != "localhost":
        try:
            host = str(ipaddress.ip_address(host))
        except ValueError:
            r.error(where, f"{host!r} is not an IP address (use 127.0.0.1, [::1] or a LAN address)")
            return None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        r.error(where, f"port must be between 1 and 65535 (got {port_text!r})")
        return None
    return ("127.0.0.1" if host == "localhost" else host), int(port_text)


def _auth(r: Reader) -> AuthPolicy:
    r.mapping(("auth",), ("plaintext_from", "failure_delay", "max_failures", "failure_window",
                          "failures_per_session", "credential_cache_ttl"))
    networks = []
    for index, text in enumerate(r.string_list(("auth", "plaintext_from"), ["127.0.0.0/8", "::1/128"])):
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            r.error(("auth", "plaintext_from", index), f"{text!r} is not a network such as 192.168.1.0/24")
    return AuthPolicy(
        plaintext_from=tuple(networks),
        failure_delay=r.number(("auth", "failure_delay"), 2.0, 0, 60),
        max_failures=r.integer(("auth", "max_failures"), 10, 1, 100000),
        failure_window=r.number(("auth", "failure_window"), 300.0, 1, 86400),
        failures_per_session=r.integer(("auth", "failures_per_session"), 3, 1, 1000),
        credential_cache_ttl=r.number(("auth", "credential_cache_ttl"), 3600.0, 0, 86400 * 30))


def _limits(r: Reader) -> Limits:
    r.mapping(("limits",), ("preauth_timeout", "idle_timeout", "sessions_per_mailbox", "drain_time"))
    return Limits(
        preauth_timeout=r.number(("limits", "preauth_timeout"), 60.0, 1, 3600),
        idle_timeout=r.number(("limits", "idle_timeout"), 1800.0, 1800, 86400),
        sessions_per_mailbox=r.integer(("limits", "sessions_per_mailbox"), 20, 1, 100000),
        drain_time=r.number(("limits", "drain_time"), 30.0, 0, 3600))


def _tokens(r: Reader, base: str) -> TokenConfig:
    r.mapping(("tokens",), ("key_file", "refresh_ahead", "refresh_every", "notify"))
    return TokenConfig(
        key_file=_resolve(base, r.string(("tokens", "key_file"), None)),
        refresh_ahead=r.number(("tokens", "refresh_ahead"), 600.0, 0, 3000),
        refresh_every=r.number(("tokens", "refresh_every"), 86400.0, 60, 86400 * 30),
        notify=r.string(("tokens", "notify"), None))


USER_KEYS = ("password", "protocols", "account", "mailbox", "app")
HASH_FORMAT = re.compile(r"^\$scrypt\$ln=\d+,r=\d+,p=\d+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]{20,}$")
USER_NAME = re.compile(r"^[^\s\x00-\x1f\x7f]+$")


def load_users(path: str, apps: Dict[str, AppConfig]) -> Users:
    """Load the user mapping; `apps` are the app registrations users may name."""
    r = Reader(read_document(path))
    data = r.document.data
    if data is None:
        return Users(path=path)
    if not isinstance(data, dict):
        r.error((), "the users file must map local user names to their settings")
        r.raise_if_errors()
    users, folded = {}, {}
    for name in data:
        user = _user(r, name, apps)
        if isinstance(name, str) and name.casefold() in folded:
            r.error((name,), f"the same name as {folded[name.casefold()]!r} but for letter case; "
                             "logins match names without regard to case", at_key=True)
        elif user is not None:
            users[name] = user
        if isinstance(name, str):
            folded.setdefault(name.casefold(), name)
    r.raise_if_errors()
    return Users(path=path, by_name=users)


def _user(r: Reader, name: str, apps: Dict[str, AppConfig]) -> Optional[User]:
    where = (name,)
    if not isinstance(r.value(where), dict):
        r.error(where, "must be a mapping with at least a password hash")
        return None
    r.mapping(where, USER_KEYS)
    password = r.string(where + ("password",))
    if password and not password.startswith("$scrypt$"):
        r.error(where + ("password",), "must be a hash made by `oauth-relay user passwd`, never a clear password")
    elif password and not HASH_FORMAT.match(password):
        r.error(where + ("password",), "is not a complete scrypt hash (set it again with `oauth-relay user passwd`)")
    if not USER_NAME.match(name):
        r.error(where, "a user name must be non-empty, with no spaces or control characters")
    protocols = r.string_list(where + ("protocols",), PROTOCOLS)
    for index, protocol in enumerate(protocols):
        if protocol not in PROTOCOLS:
            r.error(where + ("protocols", index), f"must be one of: {', '.join(PROTOCOLS)} (got {protocol!r})")
    account = r.string(where + ("account",), name)
    if account and "@" not in account:
        r.error(where + ("account",), "the Office 365 account must be an address like user@contoso.com")
    app = r.string(where + ("app",), _default_app(apps))
    if app is None and not apps:
        r.error(where, "relay.yaml has no app registration yet: add your Entra ID app under `apps:` first")
    elif app is None:
        r.error(where + ("app",), "is required when relay.yaml has more than one app")
    elif app not in apps:
        known = ", ".join(sorted(apps)) or "none"
        r.error(where + ("app",), f"unknown app {app!r} (apps in relay.yaml: {known})")
    if None in (password, account, app):
        return None
    return User(name=name, password_hash=password, protocols=tuple(protocols), account=account,
                app=app, mailbox=r.string(where + ("mailbox",), None))


def _default_app(apps: Dict[str, AppConfig]) -> Optional[str]:
    return next(iter(apps)) if len(apps) == 1 else None
