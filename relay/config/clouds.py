"""The Microsoft clouds: each one fixes the login host, the scope host and the mail hosts."""

from __future__ import annotations

from relay.config.models import CloudConfig, UpstreamConfig, UpstreamEndpoint

CLOUDS = {
    "worldwide": dict(login="https://login.microsoftonline.com", resource="https://outlook.office.com/",
                      app_only="https://outlook.office365.com/", mail="outlook.office365.com",
                      smtp="smtp.office365.com"),
    "gcc-high": dict(login="https://login.microsoftonline.us", resource="https://outlook.office365.us/",
                     app_only="https://outlook.office365.us/", mail="outlook.office365.us",
                     smtp="smtp.office365.us"),
    "china": dict(login="https://login.partner.microsoftonline.cn", resource="https://partner.outlook.cn/",
                  app_only="https://partner.outlook.cn/", mail="partner.outlook.cn",
                  smtp="smtp.partner.outlook.cn"),
}


def cloud_config(name: str) -> CloudConfig:
    preset = CLOUDS[name]
    return CloudConfig(name=name, login_host=preset["login"], resource=preset["resource"],
                       app_only_resource=preset["app_only"])


def default_upstream(name: str) -> dict:
    preset = CLOUDS[name]
    return {
        "imap": UpstreamEndpoint(preset["mail"], 993, "tls"),
        "pop3": UpstreamEndpoint(preset["mail"], 995, "tls"),
        "smtp": UpstreamEndpoint(preset["smtp"], 587, "starttls"),
    }


def default_upstream_config(name: str) -> UpstreamConfig:
    return UpstreamConfig(**default_upstream(name))
