"""Sans-IO pre-login state machines for IMAP, POP3 and SMTP.

Each machine takes client bytes and runner events and returns actions
(relay.protocols.base); it never touches a socket.
"""

from .base import (
    Action,
    Close,
    Failure,
    Login,
    LoginResult,
    Pipe,
    Send,
    SessionContext,
    StartTLS,
    Trace,
)
from .imap import ImapMachine
from .pop3 import Pop3Machine
from .smtp import SmtpMachine

MACHINES = {"imap": ImapMachine, "pop3": Pop3Machine, "smtp": SmtpMachine}


def machine_for(ctx: SessionContext):
    """The machine for ctx.protocol."""
    return MACHINES[ctx.protocol](ctx)


__all__ = [
    "Action",
    "Close",
    "Failure",
    "ImapMachine",
    "Login",
    "LoginResult",
    "MACHINES",
    "Pipe",
    "Pop3Machine",
    "Send",
    "SessionContext",
    "SmtpMachine",
    "StartTLS",
    "Trace",
    "machine_for",
]
