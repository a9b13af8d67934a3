"""Benchmarks: oauth-relay against a direct connection and against email-oauth2-proxy (bench/run)."""
