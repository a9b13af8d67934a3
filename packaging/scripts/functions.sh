# Shared by the deb and rpm maintainer scripts. packaging/build copies the functions a script
# names on its "#@functions NAME...@" line into it (preinst and %pre run before any file is
# unpacked, so the scripts cannot source a packaged file).

# The account must exist before the files are unpacked: /etc/oauth-relay/*.yaml are
# root:oauth-relay 0640, and dpkg and rpm look the group up by name.
oauth_relay_create_user() {
    if getent group oauth-relay >/dev/null && getent passwd oauth-relay >/dev/null; then
        return 0
    fi
    if command -v systemd-sysusers >/dev/null 2>&1; then
        # sysusers.d/oauth-relay.conf may not be unpacked yet: its line comes on stdin.
        if printf '%s\n' '@sysusers@' |
            systemd-sysusers --replace=/usr/lib/sysusers.d/oauth-relay.conf - >/dev/null; then
            return 0
        fi
    fi
    getent group oauth-relay >/dev/null || groupadd --system oauth-relay
    if ! getent passwd oauth-relay >/dev/null; then
        shell=/usr/sbin/nologin
        [ -x "$shell" ] || shell=/sbin/nologin
        useradd --system --gid oauth-relay --home-dir /var/lib/oauth-relay --no-create-home \
            --shell "$shell" --comment "OAuth Relay" oauth-relay
    fi
}

# /run/oauth-relay, /var/lib/oauth-relay (0700) and /var/log/oauth-relay, as tmpfiles.d says
# (its Z lines also hand over, safely, what a relay run as root left inside; the fallback
# without systemd-tmpfiles does not recurse: a recursive chown invites hardlink attacks).
oauth_relay_make_dirs() {
    if command -v systemd-tmpfiles >/dev/null 2>&1 &&
        systemd-tmpfiles --create /usr/lib/tmpfiles.d/oauth-relay.conf >/dev/null 2>&1; then
        return 0
    fi
    for spec in /run/oauth-relay:0750 /var/lib/oauth-relay:0700 /var/log/oauth-relay:0750; do
        mkdir -p "${spec%:*}"
        chown oauth-relay:oauth-relay "${spec%:*}"
        chmod "${spec#*:}" "${spec%:*}"
    done
}

# The virtual environment is made by the maintainer scripts, so they remove it too.
oauth_relay_remove_venv() {
    rm -rf /opt/oauth-relay/venv /opt/oauth-relay/venv.new /opt/oauth-relay/venvs
    rmdir /opt/oauth-relay/libexec /opt/oauth-relay/wheels /opt/oauth-relay 2>/dev/null || true
}
