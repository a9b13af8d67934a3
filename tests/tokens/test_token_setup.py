"""Problems the admin fixes in the relay's own setup, and records that outlived their setup.

- An unreadable client secret or certificate file is a setup problem, not a needed sign-in:
  retried (with the backoff), so fixing the file is enough, and the legacy program is told
  nothing about server paths.
- A recorded "needs sign-in" holds only for the app settings it was met with; an app-only
  app's fix is never `oauth-relay login`.
- Records of apps no longer in relay.yaml are shown as left over and do not fail `status`.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import time

import pytest

from relay.tokens import TokenNeedsSignIn, TokenService
from relay.tokens.cli import status_command
from relay.tokens.errors import EXPLAINED, TokenSetupError
from relay.tokens.records import app_fix
from relay.tokens.store import account_key, app_key
from tests.tokens.helpers import ACCOUNT, edit_record, sign_in

SECRET = "s3cr3t-" + "v" * 30
SHARED = "shared@contoso.com"
APP_NAME = app_key("daemon")
GENERIC = ("The relay's configuration for this account has a problem; the administrator must look at "
           "the relay's journal.")


def daemon(relay, **kwargs) -> dict:
    return relay.add_app(name="daemon", type="confidential", flow="client_credentials", **kwargs)


def status_text(config, users=None):
    out = io.StringIO()
    code = status_command(config, users, out=out)
    return code, out.getvalue()


def grants(idp, app: dict, grant_type: str = "client_credentials") -> int:
    """Token requests of this test's app (another test's background refresh is not counted)."""
    return len([r for r in idp.token_requests(app["client_id"]) if r["grant_type"] == grant_type])


# ------------------------------------------------------------------------------ setup problems
def test_missing_client_secret_file_is_a_setup_problem_retried_once_fixed(relay, idp):
    app = daemon(relay, secret=SECRET)
    path = app["client_secret_file"]
    os.rename(path, path + ".away")
    config = relay.config()
    service = TokenService(config)
    with pytest.raises(TokenSetupError) as caught:
        service.access_token(SHARED, "daemon")
    error = caught.value
    assert error.reason == f"setup problem: cannot read client secret file {path}: No such file or directory"
    assert error.client_text == GENERIC                      # what a legacy program may be told
    assert error.command == app_fix("daemon") and "oauth-relay login" not in str(error)
    record = service.store.read_record(APP_NAME)
    assert (record["state"], record["setup_problem"], record["failures"]) == ("error", True, 1)
    assert 0 < record["backoff_until"] - time.time() <= TokenService.BACKOFF_FIRST

    # Within the backoff: the same problem, no request; after it: tried again (and again not).
    with pytest.raises(TokenSetupError, match="^waiting before retrying: setup problem"):
        TokenService(config).access_token(SHARED, "daemon")
    edit_record(config, APP_NAME, backoff_until=0)
    with pytest.raises(TokenSetupError, match="^setup problem"):
        TokenService(config).access_token(SHARED, "daemon")
    assert service.store.read_record(APP_NAME)["failures"] == 2
    assert grants(idp, app) == 0

    code, text = status_text(config)
    assert code == 1, text
    assert text.splitlines()[1].split()[-1] == "error", text
    assert f"    {error.reason}\n    fix: {app_fix('daemon')}\n" in text
    assert "oauth-relay login" not in text

    # The admin puts the file back where relay.yaml says: the next use works, backoff or not.
    os.rename(path + ".away", path)
    assert idp.introspect(service.access_token(SHARED, "daemon"), "imap")["active"]
    assert grants(idp, app) == 1
    record = service.store.read_record(APP_NAME)
    assert record["state"] == "ok" and "setup_problem" not in record and not record["last_error"]
    assert status_text(config)[0] == 0


def test_certificate_readable_by_others_is_a_setup_problem_fixed_by_chmod(relay, idp):
    from tests.bed.certs import new_client_certificate
    app = daemon(relay, certificate=new_client_certificate())
    path = app["certificate_file"]
    os.chmod(path, 0o644)
    config = relay.config()
    service = TokenService(config)
    with pytest.raises(TokenSetupError, match=r"^setup problem: certificate file .* is readable by others"):
        service.access_token(SHARED, "daemon")
    assert service.store.read_record(APP_NAME)["state"] == "error"
    os.chmod(path, 0o600)
    assert service.access_token(SHARED, "daemon")   # at once: the file is not the one that failed
    assert grants(idp, app) == 1


def test_setup_problem_of_a_user_sign_in_app_is_fixed_in_the_app_not_by_login(relay, idp):
    """A confidential app that signs users in: its secret gone is no reason to sign anyone in."""
    path = relay.add_app(name="web", type="confidential", flow="auth_code", secret=SECRET)["client_secret_file"]
    config = relay.config()
    sign_in(config, idp)
    os.rename(path, path + ".away")
    service = TokenService(config)
    with pytest.raises(TokenSetupError) as caught:
        service.access_token(ACCOUNT, "web", force_refresh=True)
    assert caught.value.command == app_fix("web") and caught.value.client_text == GENERIC
    (row,) = service.accounts()
    assert (row["state"], row["command"]) == ("error", app_fix("web"))
    os.rename(path + ".away", path)
    assert service.access_token(ACCOUNT, "web", force_refresh=True)
    assert service.accounts()[0]["state"] == "ok"


# ------------------------------------------------------------------------------ needs sign-in, app-only
def test_rejected_app_secret_is_fixed_in_the_files_not_by_login(relay, idp):
    app = daemon(relay, secret=SECRET)
    relay.write_private("daemon.secret", "the-secret-id-not-its-value\n")
    config = relay.config()
    service = TokenService(config)
    with pytest.raises(TokenNeedsSignIn) as caught:
        service.access_token(SHARED, "daemon")
    assert (caught.value.aadsts, caught.value.reason) == (7000215, EXPLAINED[7000215])
    assert caught.value.command == app_fix("daemon")
    assert str(caught.value) == f"{EXPLAINED[7000215]} (AADSTS7000215); {app_fix('daemon')}"
    assert grants(idp, app) == 1
    with pytest.raises(TokenNeedsSignIn):         # known bad: no new request
        service.access_token(SHARED, "daemon")
    assert grants(idp, app) == 1
    code, text = status_text(config)
    assert code == 1 and "needs sign-in" in text and f"    fix: {app_fix('daemon')}\n" in text, text
    assert "oauth-relay login" not in text

    # The right secret written over the wrong one, same path, no reload: tried again, works.
    relay.write_private("daemon.secret", SECRET + "\n")
    assert service.access_token(SHARED, "daemon")
    assert grants(idp, app) == 2
    assert service.store.read_record(APP_NAME)["state"] == "ok"


def test_app_only_needs_sign_in_is_tried_once_more_by_a_reload(relay, idp):
    """Fixed in Entra ID (the app enabled again): `oauth-relay reload` is the fix the relay
    names, so new workers try once more; the workers of the same start do not."""
    app = daemon(relay, secret=SECRET)
    config = relay.config()
    imap_worker, smtp_worker = TokenService(config), TokenService(config)
    idp.fail_token_endpoint(status=400, error="unauthorized_client", code=7000112, count=1,
                            grant_type="client_credentials")
    with pytest.raises(TokenNeedsSignIn, match="disabled"):
        imap_worker.access_token(SHARED, "daemon")
    with pytest.raises(TokenNeedsSignIn, match="disabled"):
        smtp_worker.access_token(SHARED, "daemon")
    assert grants(idp, app) == 1
    reloaded = TokenService(config)
    assert reloaded.access_token(SHARED, "daemon")
    assert grants(idp, app) == 2
    assert reloaded.store.read_record(APP_NAME)["state"] == "ok"


# ------------------------------------------------------------------------------ needs sign-in, accounts
def test_account_needs_sign_in_holds_only_for_the_app_settings_it_was_met_with(relay, idp):
    app = relay.add_app(flow="auth_code")
    config = relay.config()
    sign_in(config, idp)
    idp.revoke(ACCOUNT, code=50173)     # not a one-shot fault: a late request of another test cannot take it
    with pytest.raises(TokenNeedsSignIn, match="revoked"):
        TokenService(config).access_token(ACCOUNT, "contoso", force_refresh=True)
    assert grants(idp, app, "refresh_token") == 1
    with pytest.raises(TokenNeedsSignIn, match="revoked"):   # other processes, same settings: honoured
        TokenService(config).access_token(ACCOUNT, "contoso", force_refresh=True)
    assert grants(idp, app, "refresh_token") == 1

    relay.apps["contoso"]["flow"] = "device_code"           # the admin changed the app's settings
    changed = relay.config()
    with pytest.raises(TokenNeedsSignIn, match="revoked"):  # so the record says nothing: tried again
        TokenService(changed).access_token(ACCOUNT, "contoso", force_refresh=True)
    assert grants(idp, app, "refresh_token") == 2
    with pytest.raises(TokenNeedsSignIn, match="revoked"):  # and recorded for these settings
        TokenService(changed).access_token(ACCOUNT, "contoso", force_refresh=True)
    assert grants(idp, app, "refresh_token") == 2
    sign_in(changed, idp)                                    # a new sign-in clears it
    record = TokenService(changed).store.read_record(account_key(ACCOUNT))
    assert record["state"] == "ok" and "fingerprint" not in record


# ------------------------------------------------------------------------------ apps removed from relay.yaml
def test_records_of_removed_apps_are_left_over_and_do_not_fail_status(relay, idp):
    relay.add_app(name="gone", flow="auth_code")
    daemon(relay, secret=SECRET)
    config = relay.config()
    sign_in(config, idp, app_name="gone")
    idp.fail_token_endpoint(status=400, error="invalid_client", code=7000222, count=1,
                            grant_type="client_credentials")
    with pytest.raises(TokenNeedsSignIn):
        TokenService(config).access_token(SHARED, "daemon")
    assert status_text(config)[0] == 1

    del relay.apps["gone"], relay.apps["daemon"]
    relay.add_app(name="contoso")
    config = relay.config()
    code, text = status_text(config)
    assert code == 0, text
    lines = text.splitlines()
    tokens = os.path.join(config.state_dir, "tokens")
    rm = {name: "rm -f -- " + " ".join(os.path.join(tokens, name + suffix) for suffix in (".token", ".json", ".lock"))
          for name in (APP_NAME, account_key(ACCOUNT))}
    assert lines[1].split()[-2:] == ["not", "configured"] and lines[1].startswith("daemon (app-only)"), text
    assert lines[2] == ("    app daemon is not in relay.yaml any more; left over (was needs sign-in: "
                        f"{EXPLAINED[7000222]}) (AADSTS7000222)")
    assert lines[3] == f"    remove it with: {rm[APP_NAME]}"
    assert lines[4].startswith(ACCOUNT) and lines[4].split()[-2:] == ["not", "configured"], text
    assert lines[5] == "    app gone is not in relay.yaml any more; left over (was ok)"
    assert lines[6] == f"    if no user needs it any more, remove it with: {rm[account_key(ACCOUNT)]}"
    out = io.StringIO()
    assert status_command(config, None, as_json=True, out=out) == 0
    rows = json.loads(out.getvalue())["accounts"]
    assert [(r["name"], r["state"], r["configured"], r["command"]) for r in rows] == [
        ("daemon", "not configured", False, rm[APP_NAME]), (ACCOUNT, "not configured", False, rm[account_key(ACCOUNT)])]

    for command in rm.values():                             # the commands shown do remove them
        subprocess.run(["/bin/sh", "-c", command], check=True)
    assert status_text(config) == (0, "No accounts signed in yet. Sign one in with: oauth-relay login ACCOUNT\n")
