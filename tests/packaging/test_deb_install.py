"""The .deb installed on this machine (root), exercised as the service runs, and purged.

The steps run once, in order, in conftest.deb_lifecycle (see pkg_lifecycle.py); each test
here reports one step. The last, test_machine_restored, checks that nothing is left.
"""

import pytest

from conftest import assert_step

pytestmark = pytest.mark.packaging


def test_dpkg_install(deb_lifecycle):
    assert_step(deb_lifecycle, "install")


def test_service_account(deb_lifecycle):
    """System user and group oauth-relay, home /var/lib/oauth-relay, no login shell."""
    assert_step(deb_lifecycle, "account")


def test_file_modes_conffiles_and_enabled_unit(deb_lifecycle):
    """0640 root:oauth-relay configuration (conffiles), 0700 state, the venv built by the
    target's python3, the unit enabled but not started."""
    assert_step(deb_lifecycle, "files")


def test_systemd_analyze_verify_installed_unit(deb_lifecycle):
    assert_step(deb_lifecycle, "unit_verify")


def test_check_config_on_packaged_config(deb_lifecycle):
    assert_step(deb_lifecycle, "check_config_packaged")


def test_exec_start_pre_as_service_user_and_exit_78(deb_lifecycle):
    assert_step(deb_lifecycle, "exec_start_pre")


def test_serve_in_unit_sandbox_notify_ready_and_greetings(deb_lifecycle):
    """READY=1 from the main process, a greeting from each of six listeners (one on a port
    below 1024 through the ambient capability), only CAP_NET_BIND_SERVICE, seccomp on."""
    assert_step(deb_lifecycle, "serve")


def test_hup_reloads_with_notify(deb_lifecycle):
    assert_step(deb_lifecycle, "hup_reload")


def test_exec_reload_waits_for_new_generation(deb_lifecycle):
    assert_step(deb_lifecycle, "exec_reload")


def test_admin_adds_user_and_signs_in_as_root(deb_lifecycle):
    """`oauth-relay user add` keeps users.yaml 0640 root:oauth-relay; `oauth-relay login` run
    by root stores tokens the service user owns; the running relay picks both up."""
    assert_step(deb_lifecycle, "bed_sign_in")


def test_imap_login_and_smtp_send_through_packaged_relay(deb_lifecycle):
    assert_step(deb_lifecycle, "bed_imap_and_smtp")


def test_logrotate_force_and_usr1_reopen(deb_lifecycle):
    assert_step(deb_lifecycle, "logrotate")


def test_term_stops_gracefully(deb_lifecycle):
    assert_step(deb_lifecycle, "term_stop")


def test_reinstall_keeps_edited_config(deb_lifecycle):
    assert_step(deb_lifecycle, "reinstall_keeps_config")


def test_remove_keeps_config_and_state(deb_lifecycle):
    assert_step(deb_lifecycle, "remove_keeps_data")


def test_purge_removes_what_it_documents(deb_lifecycle):
    assert_step(deb_lifecycle, "purge")


def test_machine_restored(deb_lifecycle):
    assert_step(deb_lifecycle, "restored")
