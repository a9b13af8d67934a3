"""Logins without TLS from the LAN: refused by default, allowed once the admin lists the network.

`auth.plaintext_from` in relay.yaml, read by load_config, decides AuthPolicy.plaintext_allowed
for the client's address (IPv4-mapped IPv6 addresses count as the IPv4 address), and that is
what a session tells its protocol machine.
"""

from types import SimpleNamespace

import pytest

from relay.config import load_config
from relay.protocols import machine_for
from relay.protocols.base import Send
from relay.session import Session

APPS = """\
apps:
  contoso: {client_id: 11111111-2222-3333-4444-555555555555, tenant: contoso.onmicrosoft.com, type: public}
listeners:
  - {protocol: imap, listen: "127.0.0.1:1143", security: starttls}
"""
LAN = 'auth:\n  plaintext_from: ["127.0.0.0/8", "::1/128", "192.168.1.0/24", "fd00:1::/64"]\n'


def policy(tmp_path, extra: str = ""):
    (tmp_path / "relay.yaml").write_text(APPS + extra)
    (tmp_path / "users.yaml").write_text("")
    return load_config(str(tmp_path / "relay.yaml"))[0]


@pytest.mark.parametrize("address", ["192.168.1.20", "::ffff:192.168.1.20", "fd00:1::5"])
def test_a_lan_address_is_refused_by_default_and_allowed_once_listed(tmp_path, address):
    assert not policy(tmp_path).auth.plaintext_allowed(address)
    assert policy(tmp_path, LAN).auth.plaintext_allowed(address)


@pytest.mark.parametrize("address", ["192.168.2.20", "::ffff:192.168.2.20", "10.0.0.1", "fd00:2::5",
                                     "::ffff:10.0.0.1", "not an address", ""])
def test_other_networks_stay_refused(tmp_path, address):
    assert not policy(tmp_path, LAN).auth.plaintext_allowed(address)


def test_loopback_stays_allowed_when_the_lan_is_added(tmp_path):
    auth = policy(tmp_path, LAN).auth
    assert auth.plaintext_allowed("127.0.0.1") and auth.plaintext_allowed("::1")
    assert auth.plaintext_allowed("::ffff:127.0.0.1")


def imap_greeting(config, address: str) -> bytes:
    """What a session from `address` on the plain IMAP listener greets with."""
    services = SimpleNamespace(config=config, capabilities={})
    session = Session(None, (address, 40000), config.listeners[0], services)
    (send,) = [action for action in machine_for(session._context()).greeting() if isinstance(action, Send)]
    return send.data


def test_the_session_of_a_listed_lan_client_may_log_in_without_tls(tmp_path):
    refused = imap_greeting(policy(tmp_path), "::ffff:192.168.1.20")
    assert b"LOGINDISABLED" in refused and b"AUTH=PLAIN" not in refused
    allowed = imap_greeting(policy(tmp_path, LAN), "::ffff:192.168.1.20")
    assert b"LOGINDISABLED" not in allowed and b"AUTH=PLAIN" in allowed and b"STARTTLS" in allowed
