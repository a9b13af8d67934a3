#!/usr/bin/python3
"""Run a command in an emulation of oauth-relay.service's sandbox, without systemd.

CI has no systemd as PID 1, so the unit itself cannot be started. This applies what the
unit asks for that the relay's code can notice, with the kernel mechanisms systemd uses:

phase ``mounts`` (root, in a mount namespace of its own: run it under ``unshare --mount``)
    ProtectSystem=strict        every mount read-only, except /dev and /proc ...
    State-/Logs-/RuntimeDirectory=   ... and the --rw paths (bind-mounted read-write)
    ProtectKernelTunables=      /proc/sys and /sys read-only
    PrivateTmp=                 empty /tmp and /var/tmp
    ProtectHome=                /home, /root and /run/user empty and inaccessible
  then ``setpriv``: User=, Group=, AmbientCapabilities= and CapabilityBoundingSet=
  CAP_NET_BIND_SERVICE, NoNewPrivileges=yes; and this script again for
phase ``seccomp`` (the service user)
    UMask=0077, MemoryDenyWriteExecute= (prctl PR_SET_MDWE), SystemCallFilter=@system-service
    ~@privileged @resources with SystemCallErrorNumber=EPERM, RestrictAddressFamilies=AF_UNIX
    AF_INET AF_INET6, RestrictNamespaces=yes, LockPersonality=yes, SystemCallArchitectures=
    native; then exec the command with the environment systemd gives a User= service.

Not emulated (nothing in the relay touches what they guard): PrivateDevices=, PrivateIPC=,
ProtectClock=, ProtectKernelModules=, ProtectKernelLogs=, ProtectControlGroups=,
ProtectProc=, ProtectHostname=, RestrictRealtime=, RestrictSUIDSGID=, RemoveIPC=.

Usage (as root):
  unshare --mount --propagation private python3 sandbox.py mounts --user oauth-relay \\
      --rw /var/lib/oauth-relay --rw /var/log/oauth-relay --rw /run/oauth-relay \\
      [--env NAME=VALUE ...] -- COMMAND ARG...
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import pwd
import socket
import subprocess
import sys

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
CLONE_NAMESPACES = (0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000
                    | 0x20000000 | 0x40000000 | 0x00000080)  # NEWNS UTS IPC USER PID NET CGROUP TIME


def _mount_points():
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            point = line.split()[4].encode().decode("unicode_escape")
            points.append(point)
    return points


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def phase_mounts(args) -> None:
    # Never touch the host's mounts: this must be a namespace of its own (unshare exec'd us,
    # so our parent is still in the namespace we came from).
    if os.readlink("/proc/self/ns/mnt") == os.readlink(f"/proc/{os.getppid()}/ns/mnt"):
        sys.exit("sandbox.py mounts: not in a mount namespace of its own (use unshare --mount)")
    _mount("--make-rprivate", "/")
    for path in args.rw:
        _mount("--bind", path, path)
    for point in sorted(set(_mount_points()), key=len):
        if _under(point, "/dev") or (_under(point, "/proc") and not _under(point, "/proc/sys")):
            continue
        if any(_under(point, path) for path in args.rw):
            continue
        # remount,bind changes this mount point's flags only, never the file system's.
        subprocess.run(["mount", "-o", "remount,bind,ro", point], check=False,
                       stderr=subprocess.DEVNULL)
    _mount("--bind", "/proc/sys", "/proc/sys")
    _mount("-o", "remount,bind,ro", "/proc/sys")
    for path in ("/tmp", "/var/tmp"):
        _mount("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs", path)
    for path in ("/home", "/root", "/run/user"):
        if os.path.isdir(path):
            _mount("-t", "tmpfs", "-o", "mode=000,nosuid,nodev,noexec", "tmpfs", path)
    try:
        with open("/etc/.oauth-relay-sandbox-probe", "w"):
            pass
        sys.exit("sandbox.py mounts: /etc is still writable")
    except OSError as exc:
        if exc.errno != errno.EROFS:
            raise
    user = pwd.getpwnam(args.user)
    command = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
               "--inh-caps=-all,+net_bind_service", "--ambient-caps=-all,+net_bind_service",
               "--bounding-set=-all,+net_bind_service", "--no-new-privs",
               sys.executable, "-I", os.path.abspath(__file__), "seccomp", "--user", args.user]
    for item in args.env:
        command += ["--env", item]
    os.execvp(command[0], command + ["--"] + args.command)


def _syscall_groups():
    out = subprocess.run(["systemd-analyze", "syscall-filter"], check=True, capture_output=True,
                         text=True).stdout
    groups, current = {}, None
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.startswith("    ") and not line.strip().startswith("#") and current is not None:
            current.append(line.strip())
    return groups


def _expand(names, groups, seen=None):
    seen = set() if seen is None else seen
    result = set()
    for name in names:
        if name.startswith("@"):
            if name not in seen:
                seen.add(name)
                result |= _expand(groups[name], groups, seen)
        else:
            result.add(name)
    return result


def phase_seccomp(args) -> None:
    import seccomp  # Debian: python3-seccomp

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        sys.exit(f"sandbox.py: PR_SET_MDWE failed (errno {ctypes.get_errno()}); kernel < 6.3?")
    groups = _syscall_groups()
    allowed = _expand(["@system-service"], groups) - _expand(["@privileged", "@resources"], groups)
    # What systemd allows even when a filter does not list it.
    allowed |= {"execve", "exit", "exit_group", "getrlimit", "rt_sigreturn", "sigreturn"}
    special = {"socket", "personality", "clone", "clone3", "unshare", "setns"}
    filt = seccomp.SyscallFilter(defaction=seccomp.ERRNO(errno.EPERM))
    for name in sorted(allowed - special):
        try:
            filt.add_rule(seccomp.ALLOW, name)
        except (RuntimeError, ValueError, OSError):
            pass  # not a system call of this architecture
    for family in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6):        # RestrictAddressFamilies
        filt.add_rule(seccomp.ALLOW, "socket", seccomp.Arg(0, seccomp.EQ, family))
    filt.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket",
                  seccomp.Arg(0, seccomp.GT, max(socket.AF_UNIX, socket.AF_INET, socket.AF_INET6)))
    for persona in (0, 0xFFFFFFFF):                                         # LockPersonality
        filt.add_rule(seccomp.ALLOW, "personality", seccomp.Arg(0, seccomp.EQ, persona))
    filt.add_rule(seccomp.ALLOW, "clone",                                   # RestrictNamespaces
                  seccomp.Arg(0, seccomp.MASKED_EQ, CLONE_NAMESPACES, 0))
    filt.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")  # as systemd: glibc falls back to clone
    filt.load()
    os.umask(0o077)
    user = pwd.getpwnam(args.user)
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin", "LANG": "C.UTF-8",
           "HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name,
           "SHELL": user.pw_shell, "STATE_DIRECTORY": "/var/lib/oauth-relay",
           "LOGS_DIRECTORY": "/var/log/oauth-relay", "RUNTIME_DIRECTORY": "/run/oauth-relay"}
    env.update(item.split("=", 1) for item in args.env)
    os.chdir("/")
    os.execvpe(args.command[0], args.command, env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=("mounts", "seccomp"))
    parser.add_argument("--user", default="oauth-relay")
    parser.add_argument("--rw", action="append", default=[])
    parser.add_argument("--env", action="append", default=[])
    parser.add_argument("command", nargs="+")
    args = parser.parse_args()
    (phase_mounts if args.phase == "mounts" else phase_seccomp)(args)


if __name__ == "__main__":
    main()
