"""The test bed itself works: the IdP through msal, Dovecot and Postfix with XOAUTH2.

Every refusal is shown with the server's own words, so relay tests can rely on them.
"""
from __future__ import annotations

import base64
import hashlib
import imaplib
import poplib
import re
import smtplib
import threading
import time
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qsl, urlsplit

import msal
import pytest
import requests

from tests.bed import APP_SCOPES, USER_SCOPES, Xoauth2, pop3_xoauth2

IMAP_SCOPE, POP_SCOPE, SMTP_SCOPE = USER_SCOPES


def public_app(bed, client_id=None, tenant=None):
    return msal.PublicClientApplication(
        client_id or bed.public_client_id, authority=bed.idp.authority(tenant or bed.tenant),
        instance_discovery=False, http_client=bed.msal_http_client())


def confidential_app(bed, client_id, credential):
    return msal.ConfidentialClientApplication(
        client_id, client_credential=credential, authority=bed.idp.authority(),
        instance_discovery=False, http_client=bed.msal_http_client())


def ropc(app, account, scopes=USER_SCOPES):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return app.acquire_token_by_username_password(account, "pw", scopes=list(scopes))


def refresh_tokens(app):
    return {rt["secret"] for rt in app.token_cache.search(msal.TokenCache.CredentialType.REFRESH_TOKEN)}


def post_token(bed, **form):
    with requests.Session() as session:
        session.trust_env = False
        return session.post(bed.idp.token_endpoint(), data=form, verify=bed.ca_file, timeout=10)


def imap_refusal(bed, user, token, implicit_tls=False):
    with pytest.raises(imaplib.IMAP4.error) as info:
        bed.imap_login(user, token, implicit_tls=implicit_tls).logout()
    return str(info.value)


def message_bytes(sender, recipient, subject, body):
    return ("From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\nMessage-ID: <%s@bed.test>\r\n"
            "Date: Tue, 03 Dec 2024 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n%s"
            % (sender, recipient, subject, uuid.uuid4().hex, body)).encode("utf-8")


# ------------------------------------------------------------------ identity provider

def test_msal_token_silent_lookup_and_rotating_refresh(bed):
    account = bed.new_account()
    app = public_app(bed)
    result = ropc(app, account)
    assert result["token_type"] == "Bearer" and result["expires_in"] == 3600
    assert set(result["scope"].split()) == set(USER_SCOPES)
    assert result["id_token_claims"]["preferred_username"] == account
    (cached_account,) = app.get_accounts(username=account)
    silent = app.acquire_token_silent(USER_SCOPES, account=cached_account)
    assert silent["access_token"] == result["access_token"]
    assert silent["token_source"] == "cache"

    (first_rt,) = refresh_tokens(app)
    bed.idp.reset_counts()
    forced = app.acquire_token_silent(USER_SCOPES, account=cached_account, force_refresh=True)
    assert forced["access_token"] != result["access_token"]
    assert bed.idp.counts()["token:refresh_token"] == 1
    assert refresh_tokens(app) != {first_rt}  # rotated ...
    again = post_token(bed, grant_type="refresh_token", client_id=bed.public_client_id,
                       refresh_token=first_rt, scope=IMAP_SCOPE + " offline_access")
    assert again.status_code == 200, again.text  # ... and the old one still works
    assert bed.idp.introspect(forced["access_token"], "imap")["username"] == account


def test_short_token_lifetime_expires_at_dovecot(bed):
    account = bed.new_account()
    bed.idp.set_token_lifetime(1)
    result = ropc(public_app(bed), account)
    assert result["expires_in"] == 1
    time.sleep(1.2)
    assert bed.idp.introspect(result["access_token"], "imap") == {"active": False}
    assert "[AUTHENTICATIONFAILED]" in imap_refusal(bed, account, result["access_token"])


def test_device_code_flow_pending_then_approved(bed):
    account = bed.new_account()
    bed.idp.set_device_flow(interval=1)
    app = public_app(bed)
    flow = app.initiate_device_flow(scopes=USER_SCOPES)
    assert flow["user_code"] in flow["message"] and flow["interval"] == 1
    results = {}
    worker = threading.Thread(target=lambda: results.update(
        app.acquire_token_by_device_flow(flow, exit_condition=lambda f: time.time() > deadline)))
    deadline = time.time() + 20
    worker.start()
    for _ in range(200):  # until msal has been told authorization_pending once
        if bed.idp.counts().get("token:urn:ietf:params:oauth:grant-type:device_code"):
            break
        time.sleep(0.02)
    assert bed.idp.device_codes()[-1]["status"] == "pending"
    bed.idp.approve_device_code(flow["user_code"], account)
    worker.join(20)
    assert not worker.is_alive()
    assert results["id_token_claims"]["preferred_username"] == account, results
    assert bed.idp.counts()["token:urn:ietf:params:oauth:grant-type:device_code"] >= 2


@pytest.mark.parametrize("outcome, error", [("deny", "authorization_declined"),
                                            ("expire", "expired_token")])
def test_device_code_flow_denied_or_expired(bed, outcome, error):
    app = public_app(bed)
    flow = app.initiate_device_flow(scopes=USER_SCOPES)
    getattr(bed.idp, outcome + "_device_code")(flow["user_code"])
    result = app.acquire_token_by_device_flow(flow, exit_condition=lambda f: True)
    assert result["error"] == error, result


def test_client_credentials_with_secret_and_with_certificate(bed):
    secret_id = bed.idp.register_app(type="confidential", secret="s3cret")
    cert = bed.new_client_certificate()
    cert_id = bed.idp.register_app(type="confidential", certificate=cert.cert_pem)
    for client_id, credential in ((secret_id, "s3cret"), (cert_id, cert.msal_credential())):
        app = confidential_app(bed, client_id, credential)
        result = app.acquire_token_for_client(scopes=APP_SCOPES)
        assert "access_token" in result, result
        assert not {"refresh_token", "id_token", "client_info"} & set(result)
        assert app.acquire_token_for_client(scopes=APP_SCOPES)["token_source"] == "cache"
    wrong = confidential_app(bed, cert_id, bed.new_client_certificate().msal_credential())
    assert 700027 in wrong.acquire_token_for_client(scopes=APP_SCOPES)["error_codes"]


def test_app_only_token_opens_a_granted_mailbox_only(bed):
    client_id = bed.idp.register_app(type="confidential", secret="s3cret")
    token = confidential_app(bed, client_id, "s3cret").acquire_token_for_client(
        scopes=APP_SCOPES)["access_token"]
    mailbox, other = bed.new_account("shared"), bed.new_account()
    bed.idp.grant_mailbox_access(client_id, mailbox)
    bed.imap_login(mailbox, token).logout()
    assert "[AUTHENTICATIONFAILED]" in imap_refusal(bed, other, token)


def test_auth_code_with_pkce_through_authorize_redirect(bed):
    account = bed.new_account()
    app = public_app(bed)
    redirect = "http://localhost:8400/callback"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # msal prefers form_post
        flow = app.initiate_auth_code_flow(USER_SCOPES, redirect_uri=redirect,
                                           login_hint=account)
    answer = bed.msal_http_client().get(flow["auth_uri"], allow_redirects=False)
    assert answer.status_code == 302
    location = answer.headers["Location"]
    assert location.startswith(redirect + "?")
    params = dict(parse_qsl(urlsplit(location).query))
    assert params["state"] == flow["state"]
    result = app.acquire_token_by_auth_code_flow(flow, params)
    assert result["id_token_claims"]["preferred_username"] == account, result

    # form_post, the account chosen by the control call; a wrong verifier fails.
    bed.idp.set_authorize_account(account)
    flow = app.initiate_auth_code_flow(USER_SCOPES, redirect_uri=redirect,
                                       response_mode="form_post")
    page = bed.msal_http_client().get(flow["auth_uri"], allow_redirects=False).text
    params = dict(re.findall(r'name="(\w+)" value="([^"]*)"', page))
    assert set(params) == {"code", "state"}
    flow["code_verifier"] = "x" * 43
    result = app.acquire_token_by_auth_code_flow(flow, params)
    assert result["error"] == "invalid_grant" and 501481 in result["error_codes"], result


def test_entra_like_client_errors(bed):
    confidential = bed.idp.register_app(type="confidential", secret="s3cret")
    cases = [
        (dict(client_id=bed.public_client_id, client_secret="nope"), 700025),
        (dict(client_id=confidential), 7000218),
        (dict(client_id=str(uuid.uuid4())), 700016),
    ]
    for form, code in cases:
        answer = post_token(bed, grant_type="password", username="x@example.test",
                            password="pw", scope=IMAP_SCOPE, **form)
        body = answer.json()
        assert answer.status_code in (400, 401) and body["error_codes"] == [code], body
        assert body["error_description"].startswith("AADSTS%d: " % code)
        assert {"timestamp", "trace_id", "correlation_id"} <= set(body)


def test_token_endpoint_fails_on_demand(bed):
    account = bed.new_account()
    bed.idp.fail_token_endpoint(status=500, count=1)
    with pytest.raises(msal.exceptions.MsalServiceError):
        ropc(public_app(bed), account)
    assert "access_token" in ropc(public_app(bed), account)  # count=1: next one works

    bed.idp.fail_token_endpoint(error="invalid_grant", code=70043, grant_type="refresh_token")
    app = public_app(bed)
    assert "access_token" in ropc(app, account)  # other grant types are not affected
    (cached,) = app.get_accounts()
    result = app.acquire_token_silent_with_error(USER_SCOPES, cached, force_refresh=True)
    assert result["error"] == "invalid_grant" and 70043 in result["error_codes"], result
    bed.idp.clear_faults()
    assert "access_token" in app.acquire_token_silent(USER_SCOPES, cached, force_refresh=True)


def test_revoked_account_is_refused_everywhere(bed):
    account = bed.new_account()
    app = public_app(bed)
    token = ropc(app, account)["access_token"]
    bed.idp.revoke(account)
    (cached,) = app.get_accounts()
    result = app.acquire_token_silent_with_error(USER_SCOPES, cached, force_refresh=True)
    assert result["error"] == "invalid_grant" and 50173 in result["error_codes"], result
    assert "[AUTHENTICATIONFAILED]" in imap_refusal(bed, account, token)
    with pytest.raises(smtplib.SMTPAuthenticationError) as info:
        bed.smtp_login(account, token).quit()
    assert info.value.smtp_code == 535
    assert bed.imap_login(account, bed.token_for(account)).logout()  # new sign-in works


# ------------------------------------------------------------------ Dovecot

def test_imap_starttls_and_imaps_and_pop3_logins(bed):
    account = bed.new_account()
    token = bed.token_for(account)
    for implicit in (False, True):
        conn = bed.imap_login(account, token, implicit_tls=implicit)
        assert conn.select("INBOX")[0] == "OK"
        conn.logout()
    for implicit in (True, False):
        conn = bed.pop3_login(account, token, implicit_tls=implicit)
        assert conn.stat() == (0, 0)
        conn.quit()
    # OAUTHBEARER works as well.
    conn = imaplib.IMAP4_SSL(bed.upstream_host, bed.imaps_port, ssl_context=bed.ssl_context())
    gs2 = "n,a=%s,\x01auth=Bearer %s\x01\x01" % (account, token)
    assert conn.authenticate("OAUTHBEARER", lambda _: gs2)[0] == "OK"
    conn.logout()


def test_sixty_parallel_sessions(bed):
    account = bed.new_account()
    token = bed.token_for(account)
    with ThreadPoolExecutor(20) as pool:
        sessions = list(pool.map(lambda i: bed.imap_login(account, token, bool(i % 2)),
                                 range(60)))
    try:
        assert all(conn.noop()[0] == "OK" for conn in sessions)
    finally:
        for conn in sessions:
            conn.logout()


def test_plain_passwords_are_refused(bed):
    account = bed.new_account()
    conn = imaplib.IMAP4(bed.upstream_host, bed.imap_port)
    conn.starttls(bed.ssl_context())
    assert "AUTH=PLAIN" not in conn.capabilities
    with pytest.raises(imaplib.IMAP4.error, match="Unsupported authentication mechanism"):
        conn.login(account, "password")
    conn.logout()
    assert "[AUTHENTICATIONFAILED]" in imap_refusal(bed, account, "password")
    pop = poplib.POP3(bed.upstream_host, bed.pop3_port)
    pop.stls(bed.ssl_context())
    with pytest.raises(poplib.error_proto, match="Unsupported authentication mechanism"):
        pop.user(account)
        pop.pass_("password")
    with pytest.raises(poplib.error_proto, match="Authentication failed"):
        pop3_xoauth2(pop, account, "password")
    pop.quit()
    with smtplib.SMTP(bed.upstream_host, bed.smtp_port) as smtp:
        smtp.starttls(context=bed.ssl_context())
        smtp.ehlo()
        assert smtp.esmtp_features["auth"].split() == ["XOAUTH2", "OAUTHBEARER"]
        plain = base64.b64encode(("\0%s\0password" % account).encode()).decode()
        assert smtp.docmd("AUTH", "PLAIN " + plain)[0] == 535
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.auth("XOAUTH2", Xoauth2(account, "password"), initial_response_ok=False)


def test_failures_are_not_delayed(bed):
    account = bed.new_account()
    started = time.monotonic()
    for _ in range(5):
        imap_refusal(bed, account, "bad-token")
    assert time.monotonic() - started < 3  # no auth_failure_delay, no anvil penalty


def test_expired_and_foreign_tokens_are_refused(bed):
    owner, other = bed.new_account(), bed.new_account()
    token = bed.token_for(owner)
    assert "[AUTHENTICATIONFAILED]" in imap_refusal(bed, other, token)
    with pytest.raises(poplib.error_proto, match="Authentication failed"):
        bed.pop3_login(other, token).quit()
    bed.idp.grant_mailbox_access(owner, other)  # a delegate may open the other mailbox
    bed.imap_login(other, token).logout()
    bed.pop3_login(other, token).quit()
    assert bed.idp.expire_access_tokens(owner) == 1
    assert "[AUTHENTICATIONFAILED]" in imap_refusal(bed, owner, token)
    assert "[AUTHENTICATIONFAILED]" in imap_refusal(bed, other, token)


def test_token_without_the_protocol_scope_is_refused(bed):
    account = bed.new_account()
    smtp_only = bed.token_for(account, scopes=[SMTP_SCOPE])
    assert "[AUTHENTICATIONFAILED]" in imap_refusal(bed, account, smtp_only)
    bed.smtp_login(account, smtp_only).quit()


def test_auth_before_starttls_is_refused(bed):
    account = bed.new_account()
    token = bed.token_for(account)
    conn = imaplib.IMAP4(bed.upstream_host, bed.imap_port)
    assert "STARTTLS" in conn.capabilities and "LOGINDISABLED" in conn.capabilities
    with pytest.raises(imaplib.IMAP4.error, match=r"\[PRIVACYREQUIRED\]"):
        conn.authenticate("XOAUTH2", Xoauth2(account, token))
    conn.logout()
    pop = poplib.POP3(bed.upstream_host, bed.pop3_port)
    with pytest.raises(poplib.error_proto, match="not allowed until SSL/TLS"):
        pop3_xoauth2(pop, account, token)
    pop.quit()
    with smtplib.SMTP(bed.upstream_host, bed.smtp_port) as smtp:
        assert smtp.docmd("AUTH", "XOAUTH2")[0] == 530  # 5.7.0 Must issue a STARTTLS first
        assert smtp.docmd("MAIL FROM:<%s>" % account)[0] == 530


def test_dovecot_and_postfix_stop_and_start_on_the_same_ports(bed):
    account = bed.new_account()
    token = bed.token_for(account)
    ports = (bed.imap_port, bed.pop3s_port, bed.smtp_port)
    bed.dovecot.stop()
    with pytest.raises(OSError):
        bed.imap_login(account, token)
    with pytest.raises(OSError):
        bed.pop3_login(account, token)
    bed.smtp_login(account, token).quit()  # SMTP does not depend on IMAP being up
    bed.postfix.stop()
    with pytest.raises(OSError):
        smtplib.SMTP(bed.upstream_host, bed.smtp_port, timeout=5)
    bed.dovecot.start()
    bed.postfix.start()
    assert (bed.imap_port, bed.pop3s_port, bed.smtp_port) == ports
    bed.imap_login(account, token).logout()
    bed.smtp_login(account, token).quit()


def test_smtp_auth_backend_down_is_a_temporary_failure(bed):
    account = bed.new_account()
    token = bed.token_for(account)
    bed.dovecot_auth.stop()
    # A running smtpd answers 454 4.7.0; a new one exits ("no SASL mechanisms").
    with pytest.raises((smtplib.SMTPAuthenticationError, smtplib.SMTPServerDisconnected)) as info:
        bed.smtp_login(account, token, timeout=20)
    if isinstance(info.value, smtplib.SMTPAuthenticationError):
        assert info.value.smtp_code == 454
    bed.dovecot_auth.start()
    for _ in range(100):  # Postfix throttles smtpd a moment after its fatal exit
        try:
            bed.smtp_login(account, token).quit()
            break
        except (smtplib.SMTPException, OSError):
            time.sleep(0.1)
    else:
        pytest.fail("SMTP AUTH did not recover:\n" + bed.postfix.log_tail())


# ------------------------------------------------------------------ Postfix

def test_send_and_read_back_byte_for_byte(bed):
    sender, recipient = bed.new_account(), bed.new_account()
    body = "Grüße from the bed.\r\n.a line that starts with a dot\r\n\r\nlast line\r\n"
    sent = message_bytes(sender, recipient, "round trip", body)
    with bed.smtp_login(sender, bed.token_for(sender)) as smtp:
        assert smtp.sendmail(sender, [recipient], sent, mail_options=["BODY=8BITMIME"]) == {}
    (stored,) = bed.wait_for_delivery(recipient)
    token = bed.token_for(recipient)
    imap = bed.imap_login(recipient, token)
    imap.select("INBOX", readonly=True)
    status, data = imap.fetch(b"1", "(BODY.PEEK[])")
    imap.logout()
    via_imap = data[0][1]
    pop = bed.pop3_login(recipient, token)
    via_pop = b"\r\n".join(pop.retr(1)[1]) + b"\r\n"
    pop.quit()
    assert via_imap == via_pop == stored.replace(b"\n", b"\r\n")
    assert via_imap.endswith(sent)  # only trace headers were added in front
    assert b"Delivered-To: " + recipient.encode() in via_imap


def test_smtputf8_and_refused_recipients(bed):
    sender = bed.new_account()
    utf8_recipient = "ü-%s@example.test" % uuid.uuid4().hex[:8]
    sent = message_bytes(sender, utf8_recipient, "Grüße", "Ünïcödé body\r\n")
    with bed.smtp_login(sender, bed.token_for(sender)) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("smtputf8") and smtp.has_extn("8bitmime")
        assert smtp.sendmail(sender, [utf8_recipient], sent,
                             mail_options=["SMTPUTF8", "BODY=8BITMIME"]) == {}
        with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
            smtp.sendmail(sender, [bed.reject_recipient], sent)
        assert info.value.recipients[bed.reject_recipient][0] == 550
        with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
            smtp.sendmail(sender, [bed.tempfail_recipient], sent)
        assert info.value.recipients[bed.tempfail_recipient][0] == 450
        with pytest.raises(smtplib.SMTPRecipientsRefused) as info:  # no Send As
            smtp.sendmail(bed.new_account(), [sender], sent)
        assert info.value.recipients[sender][0] == 553
    (stored,) = bed.wait_for_delivery(utf8_recipient)
    assert stored.replace(b"\n", b"\r\n").endswith(sent)


def test_send_as_a_shared_mailbox_needs_a_grant(bed):
    delegate, shared = bed.new_account(), bed.new_account("shared")
    sent = message_bytes(shared, delegate, "on behalf", "hello\r\n")
    with bed.smtp_login(delegate, bed.token_for(delegate)) as smtp:
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            smtp.sendmail(shared, [delegate], sent)
        bed.idp.grant_mailbox_access(delegate, shared)
        assert smtp.sendmail(shared, [delegate], sent) == {}
    bed.wait_for_delivery(delegate)


def test_forty_megabyte_message_is_delivered(bed):
    account = bed.new_account()
    line = ("x" * 76 + "\r\n").encode()
    body = line * (40 * 1024 * 1024 // len(line) + 1)
    sent = message_bytes(account, account, "big", "") + body
    with bed.smtp_login(account, bed.token_for(account), timeout=120) as smtp:
        assert smtp.sendmail(account, [account], sent) == {}
    (stored,) = bed.wait_for_delivery(account, timeout=60)
    stored = stored.replace(b"\n", b"\r\n")
    assert len(stored) > 40 * 1024 * 1024
    assert hashlib.sha256(stored[-len(body):]).digest() == hashlib.sha256(body).digest()
