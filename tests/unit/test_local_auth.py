"""Local logins: the slow hash runs once per password, wrong or changed ones never hit the cache."""

from relay.config.models import AuthPolicy, User, Users
from relay.local_auth import FailureThrottle, LocalAuthenticator
from relay.passwords import hash_password, verify_password
from relay.protocols.base import Failure


def users_with(password, protocols=("imap", "smtp")):
    user = User(name="alice", password_hash=hash_password(password), protocols=protocols,
                account="alice@contoso.com", app="contoso")
    return Users(path="users.yaml", by_name={"alice": user})


class CountingOffload:
    def __init__(self):
        self.calls = 0

    def __call__(self, function, *args):
        self.calls += 1
        return function(*args)


def test_repeated_login_hashes_once():
    offload = CountingOffload()
    auth = LocalAuthenticator(users_with("right"), AuthPolicy(), offload)
    for _ in range(3):
        user, failure, _ = auth.check("alice", "right", "imap", "127.0.0.1")
        assert failure is None and user.name == "alice"
    assert offload.calls == 1


def test_wrong_password_always_pays_the_hash_and_fails():
    offload = CountingOffload()
    auth = LocalAuthenticator(users_with("right"), AuthPolicy(), offload)
    auth.check("alice", "right", "imap", "127.0.0.1")
    for _ in range(2):
        assert auth.check("alice", "wrong", "imap", "127.0.0.1")[1] is Failure.BAD_CREDENTIALS
    assert offload.calls == 3


def test_changed_password_takes_effect_despite_the_cache():
    auth = LocalAuthenticator(users_with("old"), AuthPolicy())
    assert auth.check("alice", "old", "imap", "127.0.0.1")[1] is None
    auth.swap_users(users_with("new"))
    assert auth.check("alice", "old", "imap", "127.0.0.1")[1] is Failure.BAD_CREDENTIALS
    assert auth.check("alice", "new", "imap", "127.0.0.1")[1] is None


def test_unknown_user_costs_a_hash_too():
    offload = CountingOffload()
    auth = LocalAuthenticator(users_with("right"), AuthPolicy(), offload)
    user, failure, reason = auth.check("mallory", "x", "imap", "127.0.0.1")
    assert user is None and failure is Failure.BAD_CREDENTIALS and reason == "unknown local user"
    assert offload.calls == 1


def test_no_hash_is_made_outside_the_offloaded_call(monkeypatch):
    """The worker offloads hashing to threads; a hash made before the hand-over (the dummy
    hash for an unknown name, say) would stall every session of the worker."""
    from relay import passwords
    passwords.dummy_hash.cache_clear()
    users = users_with("right")
    inside = [False]
    real_scrypt = passwords.hashlib.scrypt

    def scrypt(*args, **kwargs):
        assert inside[0], "a slow hash ran outside the offloaded call"
        return real_scrypt(*args, **kwargs)

    def offload(function, *args):
        inside[0] = True
        try:
            return function(*args)
        finally:
            inside[0] = False

    monkeypatch.setattr(passwords.hashlib, "scrypt", scrypt)
    auth = LocalAuthenticator(users, AuthPolicy(), offload)
    assert auth.check("mallory", "x", "imap", "127.0.0.1")[1] is Failure.BAD_CREDENTIALS
    assert auth.check("alice", "wrong", "imap", "127.0.0.1")[1] is Failure.BAD_CREDENTIALS


def test_protocol_permission():
    auth = LocalAuthenticator(users_with("right", protocols=("smtp",)), AuthPolicy())
    assert auth.check("alice", "right", "imap", "127.0.0.1")[1] is Failure.NOT_PERMITTED
    assert auth.check("alice", "right", "smtp", "127.0.0.1")[1] is None


def test_repeated_failures_from_one_address_are_throttled():
    auth = LocalAuthenticator(users_with("right"), AuthPolicy(max_failures=3))
    for _ in range(3):
        auth.check("alice", "wrong", "imap", "10.0.0.9")
    user, failure, reason = auth.check("alice", "right", "imap", "10.0.0.9")
    assert failure is Failure.BAD_CREDENTIALS and "too many failed logins" in reason
    assert auth.check("alice", "right", "imap", "127.0.0.1")[1] is None  # other addresses unaffected


def test_hash_format_and_awkward_passwords():
    for password in ("", " spaced out ", 'quote"back\\slash', "ünïcødé €", "%*"):
        encoded = hash_password(password, log_n=10)
        assert encoded.startswith("$scrypt$ln=10,r=8,p=1$")
        assert verify_password(password, encoded) and not verify_password(password + "x", encoded)
    assert not verify_password("x", "$scrypt$garbage")


class _Clock:
    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_failures_are_shared_by_every_process_using_the_directory(tmp_path):
    clock = _Clock()
    imap = FailureThrottle(3, 300, clock, directory=str(tmp_path))
    smtp = FailureThrottle(3, 300, clock, directory=str(tmp_path))   # another listener's worker
    imap.record("10.0.0.9")
    smtp.record("10.0.0.9")
    assert not imap.blocked("10.0.0.9")
    imap.record("10.0.0.9")
    assert imap.blocked("10.0.0.9") and smtp.blocked("10.0.0.9")
    assert not smtp.blocked("10.0.0.10")
    clock.now += 301                                   # the window has passed
    assert not smtp.blocked("10.0.0.9")
    assert list(tmp_path.iterdir()) == []              # and the address's file is gone


def test_shared_throttle_ignores_torn_lines_and_stamps_from_a_clock_set_back(tmp_path):
    clock = _Clock()
    throttle = FailureThrottle(2, 300, clock, directory=str(tmp_path))
    throttle.record("10.0.0.9")
    path = next(tmp_path.iterdir())
    with open(path, "ab") as stream:
        stream.write(b"%.3f\n17000" % (clock.now + 86400))   # a future stamp and a torn write
    assert not throttle.blocked("10.0.0.9")
    throttle.record("10.0.0.9")
    assert throttle.blocked("10.0.0.9")


def test_shared_throttle_compacts_long_files_and_sweeps_stale_ones(tmp_path):
    clock = _Clock()
    throttle = FailureThrottle(3, 300, clock, directory=str(tmp_path))
    throttle.record("10.0.0.1")
    clock.now += 400
    for _ in range(3 * FailureThrottle.SWEEP_EVERY):  # well over COMPACT_ABOVE bytes of stamps
        throttle.record("10.0.0.2")
    files = list(tmp_path.iterdir())
    assert len(files) == 1                             # 10.0.0.1's stale file was swept
    assert files[0].stat().st_size < FailureThrottle.COMPACT_ABOVE / 2   # rewritten short
    assert throttle.blocked("10.0.0.2")


def test_throttle_counts_in_memory_when_the_directory_is_unusable(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    throttle = FailureThrottle(2, 300, _Clock(), directory=str(blocker / "failures"))
    throttle.record("10.0.0.9")
    throttle.record("10.0.0.9")
    assert throttle.blocked("10.0.0.9")
