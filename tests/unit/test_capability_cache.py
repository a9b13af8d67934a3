"""What the relay advertises before login: Office 365's known-safe set until the upstream is seen."""

from relay.services import CapabilityCache

SMTP_CONSERVATIVE = ("SIZE 36700160", "PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES")
POSTFIX = ("PIPELINING", "SIZE 157286400", "ETRN", "ENHANCEDSTATUSCODES", "8BITMIME", "DSN", "SMTPUTF8",
           "CHUNKING")


def test_before_any_contact_each_protocol_gets_the_conservative_set():
    cache = CapabilityCache()
    assert cache.get("smtp") == SMTP_CONSERVATIVE
    assert cache.get("pop3") == ("TOP", "UIDL")
    assert cache.get("imap") == ()


def test_what_was_learned_replaces_the_conservative_set_of_that_protocol_only():
    cache = CapabilityCache()
    cache.learn("smtp", POSTFIX)
    assert cache.get("smtp") == POSTFIX
    assert cache.get("pop3") == ("TOP", "UIDL")
    cache.learn("pop3", ("TOP", "UIDL", "SASL XOAUTH2", "PIPELINING"))
    assert cache.get("pop3") == ("TOP", "UIDL", "SASL XOAUTH2", "PIPELINING")
    assert cache.get("smtp") == POSTFIX


def test_a_later_contact_replaces_what_an_earlier_one_taught():
    cache = CapabilityCache()
    cache.learn("smtp", POSTFIX)
    cache.learn("smtp", ("PIPELINING", "SIZE 1000"))
    assert cache.get("smtp") == ("PIPELINING", "SIZE 1000")


def test_an_empty_answer_teaches_nothing():
    cache = CapabilityCache()
    cache.learn("smtp", ())
    assert cache.get("smtp") == SMTP_CONSERVATIVE
    cache.learn("smtp", POSTFIX)
    cache.learn("smtp", ())          # e.g. a login whose upstream EHLO was not kept
    assert cache.get("smtp") == POSTFIX


def test_imap_pre_login_capabilities_stay_the_relays_own():
    cache = CapabilityCache()
    cache.learn("imap", ("IMAP4rev1", "SASL-IR", "AUTH=XOAUTH2", "IDLE"))
    assert cache.get("imap") == ()


def test_the_cache_keeps_its_own_copy():
    cache = CapabilityCache()
    learned = list(POSTFIX)
    cache.learn("smtp", learned)
    learned.append("XCLIENT")
    assert cache.get("smtp") == POSTFIX
    assert isinstance(cache.get("smtp"), tuple)
