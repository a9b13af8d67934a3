"""OAuth Relay: lets password-only mail programs reach Office 365 through SASL XOAUTH2."""

__version__ = "0.1.0"
