"""A real Dovecot 2.3 as the Office 365 IMAP/POP3 stand-in.

Runs ``dovecot -F -c <tmp>/dovecot.conf`` as root; everything (base_dir, state,
mail, logs) lives under the bed's temp dir. Only XOAUTH2/OAUTHBEARER exist, and
tokens are checked by RFC 7662 introspection against the bed's IdP.

Choices that matter (Dovecot 2.3.19):
- Listens on 127.0.0.2: a client whose address equals the server's counts as
  "secured" and could AUTH without STARTTLS; clients come from 127.0.0.1.
- ``ssl = required``: no AUTHENTICATE/AUTH before STARTTLS/STLS on 143/110.
- Failures are not delayed: ``auth_failure_delay = 0`` and the last passdb is a
  ``deny`` static passdb with ``nodelay``; a failed login therefore carries
  nodelay, which skips both the 2 s failure delay and the anvil auth penalty
  (up to 15 s per IP), which 2.3 cannot otherwise switch off.
- Passdb chain (auth cache off, so revocation is immediate):
  1. oauth2 "own": the token's username must equal the login user;
  2. oauth2 "any": any active token, remembers its owner (pass_attrs) and
     continues;
  3. passwd-file grants/<owner>/<login user>: exists when the IdP was told
     grant_mailbox_access(owner, mailbox); owner is an account (delegate,
     shared mailbox) or a client_id (app-only token). Fully dynamic.
  4. deny + nodelay: every other case fails fast.
- Two instances with the same auth config: ``mail_services=True`` serves
  IMAP/POP3 (and LMTP), the other only the SASL socket for Postfix and the
  userdb for dovecot-lda. Stopping the first takes IMAP/POP3 down and leaves
  SMTP working, as the Office 365 services fail independently.
- The IMAP service loads zlib + imap_zlib, so it offers COMPRESS=DEFLATE
  (RFC 4978) after login: the relay's byte pipe must carry a compressed
  session it never looks into. (No zlib_save: mail is stored uncompressed.)
"""
from __future__ import annotations

import os
import pwd
import socket
import time
from typing import List

from .procs import (BedError, free_ports, require_binary, start_process, stop_process,
                    tail, wait_for_banner, wait_until_closed)

HOST = "127.0.0.2"
MAIL_USER = "mail"  # exists on every Debian system; owns the maildirs


class Dovecot:
    def __init__(self, root: str, cert: str, key: str, ca_file: str, idp_base_url: str,
                 grants_dir: str, max_connections: int = 100, name: str = "dovecot",
                 mail_services: bool = True) -> None:
        self.binary = require_binary("dovecot")
        self.lda_binary = require_binary("dovecot-lda", "/usr/lib/dovecot")
        self.name, self.mail_services = name, mail_services
        self.root = os.path.join(root, name)
        self.mail_root = os.path.join(root, "mail")
        self.grants_dir = grants_dir
        self.cert, self.key, self.ca_file = cert, key, ca_file
        self.idp_base_url = idp_base_url
        self.max_connections = max_connections
        self.host = HOST
        ports = free_ports(HOST, 5) if mail_services else [0] * 5
        self.imap_port, self.imaps_port, self.pop3_port, self.pop3s_port, self.lmtp_port = ports
        self.base_dir = os.path.join(self.root, "run")
        # Postfix's smtpd talks SASL to Dovecot through this socket.
        self.auth_socket = os.path.join(self.base_dir, "auth-client-postfix")
        self.config_file = os.path.join(self.root, "dovecot.conf")
        self.log_file = os.path.join(self.root, "dovecot.log")
        # Postfix delivers through dovecot-lda (see postfix.py for why not LMTP).
        self.lda_config_file = os.path.join(self.root, "lda.conf")
        self.lda_log_file = os.path.join(self.root, "lda.log")
        self._proc = None
        self._write_config()

    # ---------------------------------------------------------------- config
    def _write_config(self) -> None:
        mail = pwd.getpwnam(MAIL_USER)
        for path in (self.root, os.path.join(self.root, "state")):
            os.makedirs(path, mode=0o755, exist_ok=True)
        os.makedirs(self.mail_root, mode=0o755, exist_ok=True)
        os.chown(self.mail_root, mail.pw_uid, mail.pw_gid)
        introspect = "%s/common/oauth2/v2.0/introspect" % self.idp_base_url
        common = "\n".join([
            "introspection_mode = post",
            "introspection_url = %s" % introspect,
            "username_attribute = username",
            "active_attribute = active",
            "active_value = true",
            "tls_ca_cert_file = %s" % self.ca_file,
            # X-Dovecot-Auth-Service lets the IdP check the protocol's scope.
            "send_auth_headers = yes",
            "timeout_msecs = 15000",
            "max_parallel_connections = 32",
            "",
        ])
        self._write("oauth2-own.conf.ext", common)
        self._write("oauth2-any.conf.ext", common + "\n".join([
            # Any active token passes here (a constant compares equal to itself);
            # passdb 3 decides whether its owner may open this mailbox.
            "username_format = any-mailbox",
            "pass_attrs = bed_owner=%{oauth2:username}",
            "",
        ]))
        # dovecot-lda runs as the mail user: its own small config, no TLS keys.
        self._write("lda.conf", _LDA_CONFIG % {
            "base_dir": self.base_dir, "log": self.lda_log_file, "uid": mail.pw_uid,
            "gid": mail.pw_gid})
        with open(self.lda_log_file, "a"):
            pass
        os.chown(self.lda_log_file, mail.pw_uid, mail.pw_gid)
        n = self.max_connections
        root_dir = os.path.dirname(self.root)  # the bed's temp dir: unique per bed
        self._write("dovecot.conf", (_CONFIG + (_MAIL_SERVICES if self.mail_services else "")) % {
            "protocols": "imap pop3 lmtp" if self.mail_services else "none",
            "instance": "%s-%s" % (self.name, os.path.basename(root_dir)[-8:]),
            "base_dir": self.base_dir,
            "state_dir": os.path.join(self.root, "state"),
            "log": self.log_file,
            "host": HOST,
            "cert": self.cert, "key": self.key,
            "uid": mail.pw_uid, "gid": mail.pw_gid,
            "mail_root": self.mail_root,
            "own": os.path.join(self.root, "oauth2-own.conf.ext"),
            "any": os.path.join(self.root, "oauth2-any.conf.ext"),
            "grants": self.grants_dir,
            "imap": self.imap_port, "imaps": self.imaps_port,
            "pop3": self.pop3_port, "pop3s": self.pop3s_port, "lmtp": self.lmtp_port,
            "auth_socket": os.path.basename(self.auth_socket),
            "userip": n,
            "logins": n + 50,
            "processes": n + 50,
            "clients": 2 * n + 200,
            "auth_clients": 3 * n + 1000,
        })

    def _write(self, name: str, text: str) -> None:
        with open(os.path.join(self.root, name), "w", encoding="utf-8") as handle:
            handle.write(text)

    # ---------------------------------------------------------------- lifecycle
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 20.0) -> None:
        if self.running:
            return
        self._proc = start_process([self.binary, "-F", "-c", self.config_file], self.log_file)
        try:
            if self.mail_services:
                # Implicit-TLS ports open with the others; they have no clear banner.
                for port, banner in ((self.imap_port, b"* OK"), (self.pop3_port, b"+OK"),
                                     (self.lmtp_port, b"220")):
                    wait_for_banner(HOST, port, banner, timeout, self._proc, self.name)
            _wait_for_unix_socket(self.auth_socket, timeout, self._proc)
        except BedError as exc:
            self.stop()
            raise BedError("%s\n--- %s ---\n%s" % (exc, self.log_file, tail(self.log_file)))

    def stop(self) -> None:
        """Stop (takes ~1 s: Dovecot's master waits that long for its children)."""
        proc, self._proc = self._proc, None
        # The auth-only instance never exits by itself while Postfix's smtpd
        # holds its socket open; its group is killed after a short grace.
        stop_process(proc, timeout=3 if self.mail_services else 1.5)
        if proc is not None and self.mail_services:
            wait_until_closed(HOST, self.imap_port, 10)

    # ---------------------------------------------------------------- mail
    def maildir(self, mailbox: str) -> str:
        return os.path.join(self.mail_root, mailbox.lower(), "Maildir")

    def messages(self, mailbox: str) -> List[bytes]:
        """INBOX messages as stored (LF line ends), oldest first."""
        files = []
        for sub in ("new", "cur"):
            directory = os.path.join(self.maildir(mailbox), sub)
            if os.path.isdir(directory):
                files += [os.path.join(directory, f) for f in os.listdir(directory)]
        files.sort(key=lambda path: (os.path.getmtime(path), os.path.basename(path)))
        result = []
        for path in files:
            try:
                with open(path, "rb") as handle:
                    result.append(handle.read())
            except FileNotFoundError:  # moved new/ -> cur/ meanwhile
                pass
        return result

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_file, lines)


def _wait_for_unix_socket(path: str, timeout: float, proc) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BedError("dovecot exited with status %s while starting" % proc.returncode)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(2)
                sock.connect(path)
                return
        except OSError:
            time.sleep(0.02)
    raise BedError("%s does not accept connections after %.0f s" % (path, timeout))


_LDA_CONFIG = """\
# Generated by tests/bed/dovecot.py: dovecot-lda, run by Postfix's pipe(8).
base_dir = %(base_dir)s
log_path = %(log)s
stats_writer_socket_path =
first_valid_uid = %(uid)d
first_valid_gid = %(gid)d
mail_location = maildir:~/Maildir
postmaster_address = postmaster@example.test
"""

_CONFIG = """\
# Generated by tests/bed/dovecot.py for one test bed; see that module's docstring.
instance_name = %(instance)s
base_dir = %(base_dir)s
state_dir = %(state_dir)s
log_path = %(log)s
info_log_path = %(log)s
protocols = %(protocols)s
listen = %(host)s
login_greeting = Dovecot test bed ready.

ssl = required
ssl_cert = <%(cert)s
ssl_key = <%(key)s
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = yes

auth_mechanisms = xoauth2 oauthbearer
auth_failure_delay = 0
auth_cache_size = 0
auth_verbose = yes
auth_username_format = %%Lu
# Allow UTF-8 addresses (SMTPUTF8 mail to üser@example.test).
auth_username_chars =

default_internal_user = dovecot
default_internal_group = dovecot
default_login_user = dovenull
first_valid_uid = %(uid)d
first_valid_gid = %(gid)d
mail_location = maildir:~/Maildir
mail_max_userip_connections = %(userip)d
default_process_limit = %(processes)d
default_client_limit = %(clients)d
postmaster_address = postmaster@example.test

passdb {
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = %(own)s
}
passdb {
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = %(any)s
  result_success = continue
}
passdb {
  driver = passwd-file
  args = %(grants)s/%%{passdb:bed_owner}/%%Lu
  skip = unauthenticated
}
passdb {
  driver = static
  args = nopassword=y nodelay=y
  deny = yes
}
userdb {
  driver = static
  args = uid=%(uid)d gid=%(gid)d home=%(mail_root)s/%%Lu allow_all_users=yes
}

service auth {
  unix_listener %(auth_socket)s {
    mode = 0666
  }
  client_limit = %(auth_clients)d
}
service anvil {
  client_limit = %(auth_clients)d
}
"""

_MAIL_SERVICES = """\
mail_plugins = $mail_plugins zlib
protocol imap {
  mail_plugins = $mail_plugins imap_zlib
}
service imap-login {
  inet_listener imap {
    address = %(host)s
    port = %(imap)d
  }
  inet_listener imaps {
    address = %(host)s
    port = %(imaps)d
    ssl = yes
  }
  # One login process serves many clients: fast start, few processes.
  service_count = 0
  process_min_avail = 2
  process_limit = 8
  client_limit = %(logins)d
}
service pop3-login {
  inet_listener pop3 {
    address = %(host)s
    port = %(pop3)d
  }
  inet_listener pop3s {
    address = %(host)s
    port = %(pop3s)d
    ssl = yes
  }
  service_count = 0
  process_min_avail = 1
  process_limit = 8
  client_limit = %(logins)d
}
service imap-urlauth-login {
  process_limit = 8
}
service imap {
  process_limit = %(processes)d
}
service pop3 {
  process_limit = %(processes)d
}
service lmtp {
  inet_listener lmtp {
    address = %(host)s
    port = %(lmtp)d
  }
}
"""
