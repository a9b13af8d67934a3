"""Fixtures of the packaging tests: the packages (built once per run) and the .deb's
install-to-purge lifecycle on this machine (run once per run, results shared).

Under pytest-xdist every worker has its own session, so "once per run" is kept with a file
lock and a directory named after the run (PYTEST_XDIST_TESTRUNUID): the first worker
builds (or runs the lifecycle), the others wait for it and read its results.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("OAUTH_RELAY_PKG_CACHE")
             or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "oauth-relay-packaging")
RUN_ID = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"
RUNS = CACHE / "test-runs"
RUN_DIR = RUNS / RUN_ID


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "packaging: builds or installs the .deb/.rpm (tests/packaging)")


@contextlib.contextmanager
def run_lock(name: str):
    RUNS.mkdir(parents=True, exist_ok=True)
    with open(RUNS / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _prune_old_runs() -> None:
    for entry in RUNS.glob("*"):
        if entry.is_dir() and entry != RUN_DIR and time.time() - entry.stat().st_mtime > 1800:
            shutil.rmtree(entry, ignore_errors=True)


@pytest.fixture(scope="session")
def packages():
    """{'deb': Path, 'rpm': Path}, built by packaging/build once per test run."""
    with run_lock("build"):
        _prune_old_runs()
        dist = RUN_DIR / "dist"
        done = RUN_DIR / "build.json"
        if not done.exists():
            if shutil.which("sha256sum") is None:
                pytest.skip("no coreutils")
            dist.mkdir(parents=True, exist_ok=True)
            started = time.monotonic()
            result = subprocess.run([str(REPO / "packaging" / "build")], cwd=REPO,
                                    env=dict(os.environ, DIST=str(dist)),
                                    capture_output=True, text=True, timeout=900)
            if result.returncode != 0:
                pytest.fail(f"packaging/build failed ({result.returncode}):\n{result.stderr[-4000:]}",
                            pytrace=False)
            paths = result.stdout.split()
            built = {"deb": next(p for p in paths if p.endswith(".deb")),
                     "rpm": next(p for p in paths if p.endswith(".rpm")),
                     "seconds": round(time.monotonic() - started, 1)}
            done.write_text(json.dumps(built))
        built = json.loads(done.read_text())
    return {"deb": Path(built["deb"]), "rpm": Path(built["rpm"]), "seconds": built["seconds"]}


@pytest.fixture(scope="session")
def deb_lifecycle(packages, request):
    """The .deb installed, exercised and purged on this machine; {step: None | error text}.

    With the test bed (tests/conftest.py `bed`) as Office 365, the lifecycle also signs an
    account in and relays a real IMAP login and SMTP message; without it those steps fail
    and report why, the others still run."""
    import pkg_lifecycle as lifecycle

    reason = lifecycle.cannot_run()
    if reason:
        pytest.skip(reason)
    with run_lock("lifecycle"):
        done = RUN_DIR / "lifecycle.json"
        if not done.exists():
            bed, bed_error = None, None
            try:
                bed = request.getfixturevalue("bed")
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - pytest.fail() is an OutcomeException
                bed_error = f"{type(exc).__name__}: {exc}"
            results = lifecycle.run(packages["deb"], RUN_DIR / "lifecycle", bed, bed_error)
            done.write_text(json.dumps(results))
        return json.loads(done.read_text())


def assert_step(results: dict, step: str) -> None:
    assert step in results, f"lifecycle step {step!r} never ran (steps: {', '.join(results)})"
    outcome = results[step]
    if outcome is not None:
        pytest.fail(f"lifecycle step {step!r}:\n{outcome}", pytrace=False)
