"""The `oauth-relay` command: serve, check-config, user, login, status, reload, version."""

from __future__ import annotations

import argparse
import getpass
import os
import select
import signal
import sys
from typing import List, Optional

from relay import __version__
from relay.config import ConfigInvalid, default_config_path, load_config, load_users
from relay.config.models import Users

EX_CONFIG = 78  # sysexits.h: systemd's RestartPreventExitStatus=78 stops a restart loop

EXAMPLES = {
    "serve": "oauth-relay serve --config /etc/oauth-relay/relay.yaml",
    "check-config": "oauth-relay check-config --config /etc/oauth-relay/relay.yaml",
    "user": "oauth-relay user add scanner --account scanner@contoso.com --protocols smtp",
    "login": "oauth-relay login scanner@contoso.com --flow device_code",
    "status": "oauth-relay status --json",
    "reload": "oauth-relay reload --wait",
    "version": "oauth-relay version",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oauth-relay", description="Relay SMTP, POP3 and IMAP logins to Office 365 with OAuth2.",
        epilog="Config: --config PATH, else $OAUTH_RELAY_CONFIG, else /etc/oauth-relay/relay.yaml.")
    # --config may stand before or after the command; SUPPRESS keeps a later parser's default
    # from overwriting a value given earlier.
    parser.add_argument("--config", default=None, metavar="PATH", help="relay.yaml to use")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, metavar="PATH", help="relay.yaml to use")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name, help_text):
        return sub.add_parser(name, parents=[common], help=help_text, description=help_text,
                              epilog="Example: " + EXAMPLES[name], formatter_class=argparse.RawDescriptionHelpFormatter)

    add("serve", "Run the relay in the foreground (systemd runs this)")
    add("check-config", "Validate relay.yaml and the users file; exit 0 if good, 78 if not")
    _user_parser(add("user", "Add, change, remove or list local users"), common)
    login = add("login", "Sign an Office 365 account in and store its tokens")
    login.add_argument("account", help="the Office 365 account, e.g. alice@contoso.com")
    login.add_argument("--app", help="app registration from relay.yaml (default: the user's or the only one)")
    login.add_argument("--flow", choices=("device_code", "auth_code", "client_credentials"))
    login.add_argument("--refresh-token-stdin", action="store_true",
                       help="import a refresh token obtained by another tool, read from stdin")
    login.add_argument("--no-browser", action="store_true", help="print the sign-in URL, never open a browser")
    login.add_argument("--redirect-url-stdin", action="store_true",
                       help="auth_code: read the final redirect URL pasted on stdin instead of listening")
    status = add("status", "Show each account's token state and each user's last logins")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    reload = add("reload", "Tell the running relay to re-read its configuration")
    reload.add_argument("--wait", action="store_true", help="wait for the outcome; non-zero if refused")
    reload.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")
    add("version", "Print the version")
    return parser


def _user_parser(user, common) -> None:
    actions = user.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    add = actions.add_parser("add", parents=[common], help="add a local user",
                             epilog="Example: oauth-relay user add erp --account erp@contoso.com --protocols smtp")
    add.add_argument("name", help="the user name the legacy program logs in with")
    add.add_argument("--account", help="Office 365 account whose token is used (default: the name)")
    add.add_argument("--mailbox", help="a shared mailbox opened with the account's token")
    add.add_argument("--app", help="app registration in relay.yaml (default: the only one)")
    add.add_argument("--protocols", help="comma-separated: imap,pop3,smtp (default: all)")
    add.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    passwd = actions.add_parser("passwd", parents=[common], help="change a local user's password",
                                epilog="Example: echo 'new secret' | oauth-relay user passwd erp --password-stdin")
    passwd.add_argument("name")
    passwd.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    remove = actions.add_parser("remove", parents=[common], help="remove a local user",
                                epilog="Example: oauth-relay user remove erp")
    remove.add_argument("name")
    actions.add_parser("list", parents=[common], help="list local users", epilog="Example: oauth-relay user list")


def _config_path(args) -> str:
    return args.config or default_config_path()


def _load(args, with_users=True, check_files=False):
    try:
        return load_config(_config_path(args), with_users=with_users, check_files=check_files)
    except ConfigInvalid as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        return None, None


def cmd_check_config(args) -> int:
    # check_files: read the secrets, certificates and keys as this user, as serve would.
    config, users = _load(args, check_files=True)
    if config is None:
        return EX_CONFIG
    print(f"{config.path}: OK ({len(config.listeners)} listeners, {len(config.apps)} apps, "
          f"{len(users.by_name)} users in {users.path})")
    if not users.by_name:
        # Fine on a fresh install; not what a running relay should have.
        print(f"{users.path}: note: defines no users yet, so every login fails; add one with "
              "`oauth-relay user add NAME --account ADDRESS`", file=sys.stderr)
    return 0


def _read_password(from_stdin: bool) -> Optional[str]:
    if from_stdin:
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Repeat password: "):
        print("The passwords do not match.", file=sys.stderr)
        return None
    return first


def _load_for_user_command(args):
    """The config, and the users file if there is one yet (`user add` creates it)."""
    config, _ = _load(args, with_users=False)
    if config is None:
        return None, None
    if not os.path.exists(config.users_file):
        return config, Users(path=config.users_file)
    try:
        return config, load_users(config.users_file, config.apps)
    except ConfigInvalid as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        if args.action in ("passwd", "remove"):
            # These are how a broken entry gets fixed; the result is validated before it is written.
            return config, Users(path=config.users_file, by_name=dict.fromkeys(_user_names(config.users_file)))
        return None, None


def _user_names(path: str) -> List[str]:
    from relay.config.load import read_document

    try:
        data = read_document(path).data
    except ConfigInvalid:
        return []
    return list(data) if isinstance(data, dict) else []


def _user_problem(args, users: Users) -> Optional[str]:
    """What is wrong with the command before a password is asked for, if anything."""
    exists = args.name in users.by_name
    if args.action == "add":
        same = next((name for name in users.by_name if name.casefold() == args.name.casefold()), None)
        if same == args.name:
            return f"user {args.name!r} already exists (use `oauth-relay user passwd`)"
        if same is not None:
            return f"user {same!r} already exists, and user names match without regard to letter case"
    if args.action in ("passwd", "remove") and not exists:
        return f"no user {args.name!r} in {users.path}"
    return None


def cmd_user(args) -> int:
    from relay import users_file
    from relay.passwords import hash_password

    config, users = _load_for_user_command(args)
    if config is None:
        return EX_CONFIG
    if args.action == "list":
        for user in users.by_name.values():
            mailbox = f" mailbox={user.mailbox}" if user.mailbox else ""
            print(f"{user.name}\taccount={user.account}{mailbox}\tapp={user.app}\tprotocols={','.join(user.protocols)}")
        return 0
    problem = _user_problem(args, users)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    try:
        if args.action == "remove":
            users_file.remove_user(config.users_file, args.name, config.apps)
            print(f"Removed {args.name}.")
            return 0
        password = _read_password(args.password_stdin)
        if password is None:
            return 1
        if not password:
            print("A password is required.", file=sys.stderr)
            return 1
        if args.action == "add":
            protocols = [p.strip() for p in args.protocols.split(",")] if args.protocols else None
            users_file.add_user(config.users_file, args.name, hash_password(password), config.apps,
                                account=args.account, mailbox=args.mailbox, app=args.app, protocols=protocols)
            print(f"Added {args.name}. Sign its account in with: oauth-relay login {args.account or args.name}")
        else:
            users_file.set_password(config.users_file, args.name, hash_password(password), config.apps)
            print(f"Changed the password of {args.name}.")
    except users_file.UserFileError as exc:
        print(exc, file=sys.stderr)
        return 1
    except ConfigInvalid as exc:
        print(f"Not changed: {config.users_file} would not be valid after this change:", file=sys.stderr)
        for error in exc.errors:
            print(error, file=sys.stderr)
        return 1
    return 0


def cmd_login(args) -> int:
    from relay.tokens.cli import login_command

    config, _users = _load(args, with_users=False)
    if config is None:
        return EX_CONFIG
    from relay import journal

    journal.configure(config.journal.level)  # its events on stderr, at the configured level
    return login_command(config, args.account, app_name=args.app, flow=args.flow,
                         refresh_token_stdin=args.refresh_token_stdin, open_browser=not args.no_browser,
                         redirect_url_stdin=args.redirect_url_stdin)


def cmd_status(args) -> int:
    from relay.tokens.cli import status_command

    config, users = _load(args)
    if config is None:
        return EX_CONFIG
    return status_command(config, users, as_json=args.json)


def cmd_serve(args) -> int:
    from relay.master.arbiter import serve

    return serve(_config_path(args))


def cmd_reload(args) -> int:
    from relay.master.control import reload_command

    return reload_command(_config_path(args), wait=args.wait, timeout=args.timeout)


def cmd_version(_args) -> int:
    print(f"oauth-relay {__version__}")
    return 0


COMMANDS = {"serve": cmd_serve, "check-config": cmd_check_config, "user": cmd_user, "login": cmd_login,
            "status": cmd_status, "reload": cmd_reload, "version": cmd_version}


def _stdout_gone() -> bool:
    """True when nobody reads our output any more (`oauth-relay status | head -1`)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return False


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a reader that went away shows here, not as a traceback at exit
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        if not _stdout_gone():
            raise  # a socket, not our reader
        # Stop quietly, as a command killed by SIGPIPE would; what is still buffered goes nowhere.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE
