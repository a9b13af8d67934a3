"""The IdP's device code endpoint answers a client that polls faster than the interval with
`slow_down` (RFC 8628 3.5), as Entra ID may; the code stays usable."""
from __future__ import annotations

import time

import msal
import requests

from tests.bed import USER_SCOPES

GRANT_DEVICE = "urn:ietf:params:oauth:grant-type:device_code"


def poll(bed, flow):
    with requests.Session() as session:
        session.trust_env = False
        answer = session.post(bed.idp.token_endpoint(), verify=bed.ca_file, timeout=10, data={
            "grant_type": GRANT_DEVICE, "client_id": bed.public_client_id, "device_code": flow["device_code"]})
    return answer.status_code, answer.json()


def test_polling_faster_than_the_interval_gets_slow_down(bed):
    bed.idp.set_device_flow(interval=1)
    app = msal.PublicClientApplication(bed.public_client_id, authority=bed.idp.authority(),
                                       instance_discovery=False, http_client=bed.msal_http_client())
    flow = app.initiate_device_flow(scopes=USER_SCOPES)
    assert flow["interval"] == 1
    status, first = poll(bed, flow)
    assert (status, first["error"]) == (400, "authorization_pending"), first
    status, second = poll(bed, flow)              # at once, not an interval later
    assert (status, second["error"], second["error_codes"]) == (400, "slow_down", [70016]), second
    assert second["error_description"].startswith("AADSTS70016: OAuth 2.0 device flow error. Polling too fast")
    time.sleep(0.6)                               # half the interval: the IdP's tolerance
    status, third = poll(bed, flow)
    assert third["error"] == "authorization_pending", third
    account = bed.new_account()
    bed.idp.approve_device_code(flow["user_code"], account)
    status, tokens = poll(bed, flow)
    assert status == 200 and tokens["access_token"] and tokens["refresh_token"], tokens
    assert bed.idp.introspect(tokens["access_token"], "imap")["username"] == account
