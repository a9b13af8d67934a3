"""SASL PLAIN and LOGIN decoding."""

from __future__ import annotations

import base64

import pytest

from relay.protocols import sasl


def _b64(raw: bytes) -> bytes:
    return base64.b64encode(raw)


def test_plain_with_and_without_authzid():
    assert sasl.decode_plain(_b64(b"\0alice\0pw")) == sasl.PlainCredentials("", "alice", "pw")
    credentials = sasl.decode_plain(_b64(b"alice\0alice\0pw"))
    assert not credentials.asks_for_other_identity
    assert sasl.decode_plain(_b64(b"bob\0alice\0pw")).asks_for_other_identity


def test_plain_keeps_utf8_and_spaces():
    password = "p ä \"\\ % * €"
    decoded = sasl.decode_plain(_b64(("\0alice\0" + password).encode("utf-8")))
    assert decoded.password == password


def test_missing_padding_and_surrounding_spaces_are_tolerated():
    encoded = _b64(b"\0alice\0pw").rstrip(b"=")
    assert sasl.decode_plain(b" " + encoded + b" ").authcid == "alice"


@pytest.mark.parametrize(
    "answer",
    [
        b"not base64!",
        b"%%%%",
        b"=",
        _b64(b"no nuls"),
        _b64(b"\0\0pw"),
        _b64(b"a\0b\0c\0d"),
    ],
)
def test_bad_plain_answers(answer):
    with pytest.raises(sasl.SaslError):
        sasl.decode_plain(answer)


def test_a_windows_1252_password_is_read_as_what_the_user_typed():
    # An old Windows client sends 'Passwört' as cp1252 (0xF6), not UTF-8; the hash was made
    # from the admin's UTF-8 text, so the password must come out as the same characters.
    assert sasl.decode_plain(_b64(b"\0alice\0Passw\xf6rt \x80")).password == "Passwört €"
    assert sasl.decode_text(_b64(b"Passw\xf6rt")) == "Passwört"
    assert sasl.credential_text(b"\x81\xff") == "\x81ÿ"   # bytes cp1252 leaves undefined


def test_login_mechanism_pieces():
    assert sasl.USERNAME_CHALLENGE == "VXNlcm5hbWU6"
    assert sasl.PASSWORD_CHALLENGE == "UGFzc3dvcmQ6"
    assert sasl.decode_text(_b64("wörd".encode("utf-8"))) == "wörd"
    assert sasl.decode_text(b"=") == ""


def test_cancel():
    assert sasl.is_cancel(b"*")
    assert sasl.is_cancel(b" * ")
    assert not sasl.is_cancel(b"*x")


def test_password_is_not_in_repr():
    assert "secret" not in repr(sasl.decode_plain(_b64(b"\0alice\0secret")))
