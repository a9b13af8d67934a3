"""lintian and rpmlint on the built packages: clean, apart from the commented allow-lists
packaging/lintian-overrides and packaging/rpmlint.toml, and every allow-list entry still
needed (a stale one fails here, so the lists stay short)."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.packaging


def run(*command, timeout=300):
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(shutil.which("lintian") is None, reason="needs lintian")
def test_lintian_clean(packages):
    # --info --pedantic: also the informational tags, among them unused-override.
    result = run("lintian", "--info", "--pedantic", "--fail-on", "error,warning,info,pedantic",
                 str(packages["deb"]))
    tags = [line for line in result.stdout.splitlines() if re.match(r"^[EWIPX]: ", line)]
    assert not tags and result.returncode == 0, "\n".join(tags) or result.stderr


def rpmlint_filters():
    text = (REPO / "packaging" / "rpmlint.toml").read_text()
    block = text[text.index("Filters = [") :]
    return re.findall(r"^\s+'([^']+)',", block, re.M)


@pytest.mark.skipif(shutil.which("rpmlint") is None, reason="needs rpmlint")
def test_rpmlint_clean(packages):
    result = run("rpmlint", "-c", str(REPO / "packaging" / "rpmlint.toml"), str(packages["rpm"]))
    assert result.returncode == 0 and "0 errors, 0 warnings" in result.stdout, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("rpmlint") is None, reason="needs rpmlint")
def test_rpmlint_allow_list_has_no_stale_entry(packages, tmp_path):
    text = (REPO / "packaging" / "rpmlint.toml").read_text()
    unfiltered = tmp_path / "rpmlint.toml"
    unfiltered.write_text(text[: text.index("Filters = [")])
    result = run("rpmlint", "-c", str(unfiltered), str(packages["rpm"]))
    stale = [f for f in rpmlint_filters() if not re.search(f, result.stdout)]
    assert not stale, f"allow-list entries rpmlint no longer needs: {stale}"
