"""An Office 365 whose certificate the relay must not trust, through a real `oauth-relay serve`.

The bed's Dovecot and Postfix stay as they are; the relays in front of them are told to trust
something else: one a throw-away CA of its own instead of the bed's (`upstream.ca_file`), the
other the bed's CA but an upstream host name the certificate does not name. Every protocol's
client is then told "try later", the journal says the certificate failed verification, and
the token is neither sent nor refreshed: a TLS failure is no reason to doubt the sign-in.

`upstream.ca_file` is the trust anchor of the sign-in service (the bed's IdP) too, so the
first relay's account is signed in before its configuration is switched to the foreign CA:
its access token is fresh and never needs the IdP. The second relay reaches the IdP as
usual, so there the IdP's counts prove that nothing was refreshed.
"""

from __future__ import annotations

import re
import time

import pytest
import trustme

from tests.e2e.harness import LocalUser, Relay
from tests.e2e.pop3_support import RawPop3, plain
from tests.e2e.smtp_support import RawSmtp, plain_response
from tests.e2e.test_imap import RawImap, quoted

PASSWORD = "tls test pass"
PROTOCOLS = ("imap", "pop3", "smtp")
TRY_LATER = {
    "imap": b"a1 NO [UNAVAILABLE] Office 365 is unavailable right now; try again later.",
    "pop3": b"-ERR [SYS/TEMP] Office 365 is unavailable right now; try again later.",
    "smtp": b"454 4.7.0 Temporary authentication failure: Office 365 is unavailable right now; try again later.",
}
# A host name for the bed's 127.0.0.2 that its certificate does not name: the short dotted
# form, which getaddrinfo resolves but OpenSSL checks as a host name, not an address.
WRONG_NAME = "127.2"


def _rewrite(relay, replacements) -> None:
    """Replace text in a relay's config before it starts; each old text must be there."""
    text = relay.config.read_text()
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    relay.config.write_text(text)


def _ready(relay, bed, replacements) -> Relay:
    """Sign an account in with the config as the harness wrote it, then change the config
    and start the relay, with one local user for that account."""
    bed.idp.set_device_flow(interval=1)
    account = bed.new_account("tls")
    relay.sign_in(account)
    _rewrite(relay, replacements)
    relay.start()
    relay.user = LocalUser(f"tls-{time.monotonic_ns()}", PASSWORD, account, None)
    relay.add_user(relay.user.name, PASSWORD, account)   # every protocol
    return relay


@pytest.fixture(scope="module")
def foreign_ca_relay(bed, tmp_path_factory):
    root = tmp_path_factory.mktemp("relay-foreign-ca")
    foreign = root / "foreign-ca.pem"
    trustme.CA(organization_name="Not the bed's CA").cert_pem.write_to_path(str(foreign))
    instance = Relay(bed, root)
    try:
        yield _ready(instance, bed, {f"  ca_file: {bed.ca_file}\n": f"  ca_file: {foreign}\n"})
    finally:
        instance.stop()


@pytest.fixture(scope="module")
def wrong_name_relay(bed, tmp_path_factory):
    instance = Relay(bed, tmp_path_factory.mktemp("relay-wrong-name"))
    upstream = {f"  {protocol}: {{host: {bed.upstream_host}, ": f"  {protocol}: {{host: '{WRONG_NAME}', "
                for protocol in PROTOCOLS}
    try:
        yield _ready(instance, bed, upstream)
    finally:
        instance.stop()


def login(relay, bed, protocol: str) -> bytes:
    """One login over the protocol's implicit-TLS listener; the relay's final answer to it."""
    context = bed.ssl_context()
    if protocol == "imap":
        with RawImap(relay.ports["imap-tls"], context) as raw:
            raw.line()
            return raw.command(b"a1", b"LOGIN " + quoted(relay.user.name) + b" " + quoted(PASSWORD))[-1]
    if protocol == "pop3":
        with RawPop3(relay.ports["pop3-tls"], context) as raw:
            raw.line()
            return raw.command("AUTH PLAIN " + plain(relay.user.name, PASSWORD))
    with RawSmtp(relay.ports["smtp-tls"], context) as raw:
        assert raw.reply()[0] == 220
        assert raw.command(b"EHLO legacy.example.test")[0] == 250
        return raw.command(b"AUTH PLAIN " + plain_response(relay.user))[1].encode()


def upstream_port(bed, protocol: str) -> int:
    return {"imap": bed.imaps_port, "pop3": bed.pop3s_port, "smtp": bed.smtp_port}[protocol]


def refused_login(relay, bed, protocol: str) -> str:
    """Log in; check the client was told to try later and no token was refreshed. The journal
    lines of that login."""
    mark = len(relay.journal_text())
    bed.idp.reset_counts()
    assert login(relay, bed, protocol) == TRY_LATER[protocol]
    assert not bed.idp.counts().get("token:refresh_token:" + relay.user.account)
    journal = "\n".join(line for line in relay.journal_text()[mark:].splitlines()
                        if f"user={relay.user.name}" in line)
    assert "upstream_refused_token" not in journal, journal
    # Not a word of AUTH to a server that could not prove who it is.
    assert not re.search(r"dir=relay>upstream line=.?(<redacted>|AUTH|R3 )", journal), journal
    return journal


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_certificate_of_an_unknown_ca_is_refused(foreign_ca_relay, bed, protocol):
    journal = refused_login(foreign_ca_relay, bed, protocol)
    assert re.search(r"login_upstream_failed .*reason=.?TLS with %s:%d failed.* answer=.?\[SSL: "
                     r"CERTIFICATE_VERIFY_FAILED\] certificate verify failed: unable to get local issuer "
                     r"certificate" % (re.escape(bed.upstream_host), upstream_port(bed, protocol)), journal), journal


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_certificate_for_another_host_name_is_refused(wrong_name_relay, bed, protocol):
    journal = refused_login(wrong_name_relay, bed, protocol)
    assert re.search(r"login_upstream_failed .*reason=.?TLS with %s:%d failed.* answer=.?\[SSL: "
                     r"CERTIFICATE_VERIFY_FAILED\] certificate verify failed: Hostname mismatch, certificate "
                     r"is not valid for '%s'" % (re.escape(WRONG_NAME), upstream_port(bed, protocol),
                                                 re.escape(WRONG_NAME)), journal), journal
