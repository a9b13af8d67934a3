"""Helpers for the token tests: relay configs, a fake terminal and browser, quick sign-in."""

from __future__ import annotations

import html
import io
import json
import os
import re
import threading
import uuid
from typing import Dict, List, Optional
from urllib.parse import parse_qs, urlsplit

import requests

from relay.config import load_config

ACCOUNT = "alice@contoso.com"
TENANT = "contoso"


class Relay:
    """A relay.yaml + users.yaml in tmp_path, loaded with relay.config."""

    def __init__(self, root, idp):
        self.root, self.idp = str(root), idp
        self.apps: Dict[str, dict] = {}
        self.tokens: dict = {}
        self.upstream: dict = {"ca_file": idp.test_ca_file}
        self.users: Dict[str, dict] = {}

    def add_app(self, name="contoso", type="public", flow="device_code", register=True,
                idp_type=None, secret=None, certificate=None, **extra) -> dict:
        """Register the app at the IdP (as idp_type, default: the same type) and in relay.yaml."""
        client_id = str(uuid.uuid4())
        if register:
            self.idp.register_app(client_id=client_id, type=idp_type or type,
                                  secret=secret if (idp_type or type) == "confidential" else None,
                                  certificate=certificate.cert_pem if certificate else None)
        app = {"client_id": client_id, "tenant": TENANT, "type": type, "flow": flow,
               "authority": self.idp.authority(TENANT)}
        if secret:
            app["client_secret_file"] = self.write_private(f"{name}.secret", secret + "\n")
        if certificate:
            app["certificate_file"] = self.write_private(f"{name}.pem", certificate.key_pem + certificate.cert_pem)
        app.update(extra)
        self.apps[name] = app
        return app

    def write_private(self, name: str, text: str) -> str:
        path = os.path.join(self.root, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        return path

    def config(self):
        # YAML is a superset of JSON: no quoting surprises.
        doc = {"state_dir": "state", "runtime_dir": "run", "users": "users.yaml",
               "upstream": self.upstream, "apps": self.apps, "tokens": self.tokens,
               "listeners": []}
        with open(os.path.join(self.root, "relay.yaml"), "w") as handle:
            json.dump(doc, handle)
        with open(os.path.join(self.root, "users.yaml"), "w") as handle:
            json.dump(self.users, handle)
        config, _ = load_config(os.path.join(self.root, "relay.yaml"))
        return config

    @property
    def path(self) -> str:
        return os.path.join(self.root, "relay.yaml")


class Terminal(io.StringIO):
    """What login_command prints; plays the user: approves device codes, opens auth URLs."""

    def __init__(self, idp, account=ACCOUNT, follow_redirect=True, paste_to=None):
        super().__init__()
        self.idp, self.account = idp, account
        self.follow_redirect, self.paste_to = follow_redirect, paste_to
        self.threads: List[threading.Thread] = []
        self.redirects: List[str] = []   # where the browser went back to
        self.codes: List[Optional[str]] = []  # auth codes seen (for the journal test)
        self.failures: List[BaseException] = []

    def write(self, text):
        code = re.search(r"enter the code (\w+)", text)
        if code:
            self._spawn(self.idp.approve_device_code, code.group(1), self.account)
        url = re.search(r"^\s+(https://\S+/oauth2/v2\.0/authorize\?\S+)", text, re.M)
        if url:
            self._spawn(self._browse, url.group(1))
        return super().write(text)

    def _spawn(self, target, *args):
        def run():
            try:
                target(*args)
            except BaseException as exc:  # reported by the test
                self.failures.append(exc)
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)

    def _browse(self, url):
        with requests.Session() as session:
            session.trust_env = False
            answer = session.get(url, verify=self.idp.test_ca_file, allow_redirects=False, timeout=10)
            answer.close()
            if answer.status_code == 200:  # form_post: the page posts hidden fields back
                action = re.search(r'action="([^"]+)"', answer.text).group(1)
                fields = {k: html.unescape(v) for k, v in
                          re.findall(r'name="([^"]+)" value="([^"]*)"', answer.text)}
                self.redirects.append(action + "?" + "&".join(f"{k}=..." for k in fields))
                self.codes.append(fields.get("code"))
                session.post(action, data=fields, timeout=10).close()
                return
            location = answer.headers["Location"]
            self.redirects.append(location)
            self.codes.append(parse_qs(urlsplit(location).query).get("code", [None])[0])
            if self.paste_to is not None:
                self.paste_to.put(location)
            elif self.follow_redirect:
                session.get(location, timeout=10).close()

    def join(self):
        for thread in self.threads:
            thread.join(10)
        assert not self.failures, self.failures


class PasteInput:
    """A stdin whose one line arrives when the fake browser has it."""

    def __init__(self):
        self._line: Optional[str] = None
        self._ready = threading.Event()

    def put(self, line: str) -> None:
        self._line = line
        self._ready.set()

    def readline(self) -> str:
        assert self._ready.wait(10)
        return self._line + "\n"


def sign_in(config, idp, account=ACCOUNT, app_name=None, flow="auth_code") -> str:
    """A quick sign-in through the loopback redirect; returns what was printed."""
    from relay.tokens.cli import login_command
    term = Terminal(idp, account=account)
    code = login_command(config, account, app_name=app_name, flow=flow, open_browser=False, out=term)
    term.join()
    assert code == 0, term.getvalue()
    return term.getvalue()


def idp_calls(idp) -> dict:
    """Requests the relay made to the IdP (the tests' own introspection left out)."""
    return {key: value for key, value in idp.counts().items() if key != "introspect"}


def stored_cache(config, name) -> dict:
    """The decrypted msal cache of a store file, as the relay wrote it."""
    from relay.tokens.store import TokenStore
    text, _ = TokenStore(config.state_dir, config.tokens.key_file).load(name)
    return json.loads(text)


def stored_refresh_tokens(config, name) -> List[str]:
    return sorted(e["secret"] for e in stored_cache(config, name).get("RefreshToken", {}).values())


def age_access_tokens(config, name, left: float, age: float = 3000) -> None:
    """Make the stored access tokens look `age` s old with `left` s to live."""
    import time
    from relay.tokens.store import TokenStore
    store = TokenStore(config.state_dir, config.tokens.key_file)
    now = int(time.time())
    with store.lock(name, 10):
        text, _ = store.load(name)
        cache = json.loads(text)
        for entry in cache.get("AccessToken", {}).values():
            entry["cached_at"], entry["expires_on"] = str(now - int(age)), str(now + int(left))
        store.save(name, json.dumps(cache))


def edit_record(config, name, **fields) -> dict:
    from relay.tokens.store import TokenStore
    store = TokenStore(config.state_dir, config.tokens.key_file)
    with store.lock(name, 10):
        record = store.read_record(name)
        record.update(fields)
        store.write_record(name, record)
    return record
