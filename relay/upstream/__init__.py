"""The relay's own side of each session: connect to Office 365, TLS, SASL XOAUTH2."""
