"""A real Postfix 3.7 as the Office 365 SMTP submission stand-in.

Config, queue and data directories live under the bed's temp dir; the queue
layout is made directly (``postfix -c DIR check`` as a fallback). The master
daemon runs in the foreground (``master -c DIR -d``) as our child, so stop()
is a plain SIGTERM and start() after stop() reuses the same port.

- 127.0.0.2:<port> submission: TLS before anything (security level encrypt,
  smtpd_tls_auth_only), SASL via Dovecot's auth socket, so only XOAUTH2 and
  OAUTHBEARER exist and a token is checked exactly as for IMAP.
- MAIL FROM must be owned by the login (reject_sender_login_mismatch); the
  IdP answers the ownership map, so grant_mailbox_access(..., send_as=True)
  gives Send As.
- example.test goes to Dovecot through dovecot-lda (pipe). Not LMTP: Dovecot
  2.3's LMTP does not offer SMTPUTF8, so Postfix would bounce every message
  sent with SMTPUTF8 (5.6.7), which Office 365 accepts. UTF-8 local parts,
  which dovecot-lda 2.3 refuses, reach the same maildir via a shell script.
- reject@example.test gets a 550, tempfail@example.test a 450; any other
  domain is refused; nothing ever leaves the machine.
- Refusals after the message body (smtpd_end_of_data_restrictions): a single
  recipient whose local part starts with reject-eod- gets a 554 5.7.1, one
  with tempfail-eod- a 451 4.3.0, in reply to the final "." (or the last
  BDAT), after the client sent the whole message; nothing is queued.
- message_size_limit = 150 MiB as Office 365 advertises; SMTPUTF8 and 8BITMIME on.
"""
from __future__ import annotations

import grp
import os
import pwd
import subprocess
import time

from .procs import (BedError, free_ports, require_binary, start_process, stop_process,
                    tail, wait_for_banner, wait_until_closed)

HOST = "127.0.0.2"
MESSAGE_SIZE_LIMIT = 157286400
REJECT_RECIPIENT = "reject@example.test"
TEMPFAIL_RECIPIENT = "tempfail@example.test"
# Local-part prefixes refused at the end of DATA (append anything, e.g. a uuid, @example.test).
REJECT_EOD_PREFIX = "reject-eod-"
TEMPFAIL_EOD_PREFIX = "tempfail-eod-"
REJECT_EOD_TEXT = "5.7.1 Message content rejected by the test bed"
TEMPFAIL_EOD_TEXT = "4.3.0 Message content check unavailable, try again later"


class Postfix:
    def __init__(self, root: str, cert: str, key: str, sasl_socket: str, lda: str,
                 lda_config: str, mail_root: str, sender_map: str,
                 max_connections: int = 100) -> None:
        self.postfix_cmd = require_binary("postfix")
        self.master = require_binary("master", "/usr/lib/postfix/sbin")
        self.root = os.path.join(root, "postfix")
        self.config_dir = os.path.join(self.root, "etc")
        self.queue_dir = os.path.join(self.root, "queue")
        self.log_file = os.path.join(self.root, "postfix.log")
        self.host = HOST
        (self.smtp_port,) = free_ports(HOST, 1)
        self.cert, self.key = cert, key
        self.sasl_socket, self.lda, self.lda_config = sasl_socket, lda, lda_config
        self.sender_map = sender_map
        self.mail_root = mail_root
        self.max_connections = max_connections
        self._proc = None
        self._checked = False
        self._write_config()

    def _write_config(self) -> None:
        os.makedirs(self.config_dir, mode=0o755, exist_ok=True)
        os.makedirs(self.queue_dir, mode=0o755, exist_ok=True)
        values = {
            "root": self.root, "queue": self.queue_dir, "log": self.log_file,
            "data": os.path.join(self.root, "data"), "cert": self.cert, "key": self.key,
            "sasl": self.sasl_socket, "lda": self.lda, "lda_config": self.lda_config,
            "host": HOST,
            "port": self.smtp_port, "access": os.path.join(self.config_dir, "recipient_access"),
            "eod_access": os.path.join(self.config_dir, "end_of_data_access"),
            "sender_map": self.sender_map, "size": MESSAGE_SIZE_LIMIT,
            "procs": self.max_connections + 20,
            "transport": os.path.join(self.config_dir, "transport"),
            "utf8drop": os.path.join(self.config_dir, "utf8drop.sh"),
        }
        self._write("main.cf", _MAIN_CF % values)
        self._write("master.cf", _MASTER_CF % values)
        # Not printable ASCII from start to end: a UTF-8 address (see main.cf).
        self._write("transport", "!/^[ -~]*$/ utf8drop:\n")
        self._write("utf8drop.sh", _UTF8_DROP % {"mail_root": self.mail_root})
        self._write("recipient_access", "\n".join([
            # Postfix prefixes "<rcpt>: Recipient address rejected: ".
            "%s 550 5.1.1 User unknown" % REJECT_RECIPIENT,
            "%s 450 4.2.1 Mailbox busy, try again later" % TEMPFAIL_RECIPIENT,
            "",
        ]))
        # Checked at the end of DATA; the same "<rcpt>: Recipient address rejected: " prefix.
        self._write("end_of_data_access", "\n".join([
            "/^%s[^@]*@example\\.test$/ 554 %s" % (REJECT_EOD_PREFIX, REJECT_EOD_TEXT),
            "/^%s[^@]*@example\\.test$/ 451 %s" % (TEMPFAIL_EOD_PREFIX, TEMPFAIL_EOD_TEXT),
            "",
        ]))

    def _write(self, name: str, text: str) -> None:
        path = os.path.join(self.config_dir, name)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        # Postfix re-reads a config file younger than ~2 s until it looks
        # settled (1.5 s at every first start): date it back.
        past = time.time() - 60
        os.utime(path, (past, past))

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 20.0) -> None:
        if self.running:
            return
        if not self._checked:
            _make_queue(self.queue_dir, os.path.join(self.root, "data"))
            self._checked = True
        try:
            self._start_master(timeout)
        except BedError:
            # Let Postfix repair its own queue layout, then try once more.
            result = subprocess.run([self.postfix_cmd, "-c", self.config_dir, "check"],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    timeout=60)
            if result.returncode != 0:
                raise BedError("postfix check failed:\n%s"
                               % result.stdout.decode("utf-8", "replace"))
            self._start_master(timeout)

    def _start_master(self, timeout: float) -> None:
        self._proc = start_process([self.master, "-c", self.config_dir, "-d"], self.log_file)
        try:
            wait_for_banner(HOST, self.smtp_port, b"220", timeout, self._proc, "postfix")
        except BedError as exc:
            self.stop()
            raise BedError("%s\n--- postfix.log ---\n%s" % (exc, tail(self.log_file)))

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        stop_process(proc)
        if proc is not None:
            wait_until_closed(HOST, self.smtp_port, 10)

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_file, lines)


def _make_queue(queue_dir: str, data_dir: str) -> None:
    """The queue layout ``postfix check`` would create (it takes ~2 s; this, ~1 ms)."""
    pw, drop = pwd.getpwnam("postfix"), grp.getgrnam("postdrop")
    layout = [(d, pw.pw_gid, 0o700) for d in (
        "active", "bounce", "corrupt", "defer", "deferred", "flush", "hold", "incoming",
        "private", "saved", "trace")]
    layout += [("maildrop", drop.gr_gid, 0o730), ("public", drop.gr_gid, 0o710)]
    for name, gid, mode in layout:
        path = os.path.join(queue_dir, name)
        os.makedirs(path, exist_ok=True)
        os.chown(path, pw.pw_uid, gid)
        os.chmod(path, mode)
    os.makedirs(os.path.join(queue_dir, "pid"), mode=0o755, exist_ok=True)
    os.makedirs(data_dir, exist_ok=True)
    os.chown(data_dir, pw.pw_uid, pw.pw_gid)
    os.chmod(data_dir, 0o700)


_UTF8_DROP = """\
# Maildir delivery for UTF-8 local parts (see main.cf); $1 = recipient.
umask 077
box="%(mail_root)s/$(printf '%%s' "$1" | tr 'A-Z' 'a-z')/Maildir"
mkdir -p "$box/tmp" "$box/new" "$box/cur" || exit 75
name="$(date +%%s).P$$.bed"
cat > "$box/tmp/$name" && mv "$box/tmp/$name" "$box/new/$name" || exit 75
"""

_MAIN_CF = """\
# Generated by tests/bed/postfix.py for one test bed; see that module's docstring.
compatibility_level = 3.6
queue_directory = %(queue)s
data_directory = %(data)s
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
maillog_file = %(log)s
maillog_file_prefixes = %(root)s

myhostname = mx.example.test
mydomain = example.test
myorigin = example.test
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_banner = $myhostname ESMTP Postfix test bed
biff = no
append_dot_mydomain = no
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
alias_maps =
alias_database =

# Only example.test exists; dovecot-lda stores it (one recipient per call).
# dovecot-lda 2.3 refuses non-ASCII local parts: a tiny shell delivery agent
# writes those into the same maildir (Dovecot's layout: <mail>/<user>/Maildir).
virtual_mailbox_domains = example.test
virtual_transport = dovecot
dovecot_destination_recipient_limit = 1
utf8drop_destination_recipient_limit = 1
transport_maps = regexp:%(transport)s
smtpd_reject_unlisted_recipient = no
local_transport = error:5.1.1 no local delivery in the test bed
default_transport = error:5.7.1 the test bed delivers to example.test only
relay_transport = $default_transport
message_size_limit = %(size)d
mailbox_size_limit = 0
virtual_mailbox_limit = 0
smtputf8_enable = yes

# Retry quickly after Dovecot was stopped and started again.
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 5s
in_flow_delay = 0
smtpd_error_sleep_time = 0

smtpd_tls_cert_file = %(cert)s
smtpd_tls_key_file = %(key)s
smtpd_tls_security_level = may
smtpd_tls_auth_only = yes
smtpd_tls_mandatory_protocols = >=TLSv1.2
smtpd_tls_protocols = >=TLSv1.2
smtpd_tls_loglevel = 1

smtpd_sasl_type = dovecot
smtpd_sasl_path = %(sasl)s
smtpd_sasl_auth_enable = no
smtpd_sasl_security_options = noanonymous
smtpd_sasl_tls_security_options = noanonymous
smtpd_sender_login_maps = socketmap:inet:%(sender_map)s:senders
smtpd_sender_restrictions = reject_sender_login_mismatch
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_recipient_restrictions = check_recipient_access texthash:%(access)s,
    permit_sasl_authenticated, reject
smtpd_end_of_data_restrictions = check_recipient_access regexp:%(eod_access)s
"""

_MASTER_CF = """\
# Generated by tests/bed/postfix.py. Nothing is chrooted: paths are absolute.
%(host)s:%(port)d inet n - n - %(procs)d smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
  -o smtpd_sasl_auth_enable=yes
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
proxywrite unix - - n - 1 proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
utf8drop  unix  - n n - - pipe
  flags=DRXu user=mail:mail argv=/bin/sh %(utf8drop)s ${recipient}
dovecot   unix  - n n - - pipe
  flags=DRXu user=mail:mail argv=%(lda)s -c %(lda_config)s -f ${sender} -d ${recipient}
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""
