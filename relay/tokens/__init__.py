"""OAuth2 tokens for Office 365: sign-in, an encrypted shared store, refresh, status."""

from relay.tokens.errors import TokenNeedsSignIn, TokenStoreError, TokenUnavailable
from relay.tokens.service import TokenService

__all__ = ["TokenNeedsSignIn", "TokenService", "TokenStoreError", "TokenUnavailable"]
