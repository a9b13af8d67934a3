"""The scopes the relay asks Entra ID for, per cloud: delegated and app-only.

Written out here rather than derived from relay/config/clouds.py, so a wrong host in that
table fails: Exchange Online refuses a token for another resource with a bare "NO".
"""

from __future__ import annotations

import textwrap

import pytest

from relay.config import load_config
from relay.config.clouds import CLOUDS, cloud_config
from relay.tokens.apps import app_only_scopes, delegated_scopes, scopes_for

EXPECTED = {
    # cloud: (delegated resource host, app-only resource host)
    "worldwide": ("https://outlook.office.com/", "https://outlook.office365.com/"),
    "gcc-high": ("https://outlook.office365.us/", "https://outlook.office365.us/"),
    "china": ("https://partner.outlook.cn/", "https://partner.outlook.cn/"),
}
RESERVED = {"openid", "profile", "offline_access"}   # msal adds them and refuses them if passed


def test_every_cloud_is_covered():
    assert set(CLOUDS) == set(EXPECTED)


@pytest.mark.parametrize("cloud", sorted(EXPECTED))
def test_delegated_scopes(cloud):
    host = EXPECTED[cloud][0]
    scopes = delegated_scopes(cloud_config(cloud))
    assert scopes == [host + "IMAP.AccessAsUser.All", host + "POP.AccessAsUser.All", host + "SMTP.Send"]
    assert not RESERVED & {s.lower() for s in scopes}


@pytest.mark.parametrize("cloud", sorted(EXPECTED))
def test_app_only_scopes(cloud):
    # Client credentials take exactly one scope: the resource's /.default.
    assert app_only_scopes(cloud_config(cloud)) == [EXPECTED[cloud][1] + ".default"]


@pytest.mark.parametrize("cloud", sorted(EXPECTED))
def test_scopes_follow_the_configured_cloud_and_flow(tmp_path, cloud):
    (tmp_path / "relay.yaml").write_text(textwrap.dedent(f"""\
        cloud: {cloud}
        state_dir: state
        apps:
          people:
            client_id: 11111111-2222-3333-4444-555555555555
            tenant: contoso.onmicrosoft.com
            type: public
            flow: device_code
          daemon:
            client_id: 66666666-7777-8888-9999-000000000000
            tenant: contoso.onmicrosoft.com
            type: confidential
            flow: client_credentials
            client_secret_file: daemon.secret
        """))
    (tmp_path / "users.yaml").write_text("{}\n")
    config, _ = load_config(str(tmp_path / "relay.yaml"))
    delegated, app_only = EXPECTED[cloud]
    people, daemon = config.apps["people"], config.apps["daemon"]
    assert scopes_for(config, people, people.flow) == [
        delegated + "IMAP.AccessAsUser.All", delegated + "POP.AccessAsUser.All", delegated + "SMTP.Send"]
    assert scopes_for(config, daemon, daemon.flow) == [app_only + ".default"]
    # A confidential app may sign people in too (device code, auth code): delegated scopes then.
    assert scopes_for(config, daemon, "auth_code") == scopes_for(config, people, "auth_code")
