"""`gpumon trust HOST`: show a server's SSH host key fingerprint and record it in known_hosts.

Never trust on first use: the poller refuses an unknown key (the server shows OFF, "host key
unknown"), and this command is how an admin records one after checking its fingerprint. Keys
are read and checked by gpumon.poll.hostkeys; the key exchange is gpumon.poll.transport's.

Exit status: 0 recorded or already trusted (or polled locally: no key); 1 not recorded (a
changed or revoked key, declined, no terminal to ask on, unreachable); 2 config error.
"""

from __future__ import annotations

import sys

from gpumon.config import Config, ConfigError
from gpumon.poll.hostkeys import (
    CHANGED,
    REVOKED,
    TRUSTED,
    KnownHosts,
    append_known_host,
    fingerprint,
    known_hosts_files,
    record_file,
)
from gpumon.poll.inventory import resolve
from gpumon.poll.transport import Opener, PollFailure, fetch_host_key


def trust(config: Config, host: str, assume_yes: bool) -> int:
    """Connect to HOST, show its key, and record it (asking first unless --yes)."""
    try:
        dest = resolve(config, host)
    except ConfigError as e:
        print(f"gpumon trust: {e}", file=sys.stderr)
        return 2
    if dest.local:
        print(f"gpumon trust: {host} is polled locally (local = true): no SSH host key to trust")
        return 0
    known_hosts = KnownHosts(known_hosts_files(config))
    # Jump hosts are resolved as the poller resolves them (their user, port and keys).
    opener = Opener(config.poll, known_hosts, resolve_jump=lambda hop: resolve(config, hop))
    try:
        key = fetch_host_key(dest, opener)
    except PollFailure as e:
        print(f"gpumon trust: {host} ({dest.label}): {e.reason}", file=sys.stderr)
        return 1
    finally:
        opener.close()
    verdict = known_hosts.check(dest.known_hosts_name, key.get_name(), key.asbytes())
    print(f"{host} ({dest.label}) offers {verdict.key_type} key {verdict.fingerprint}")
    if verdict.status == TRUSTED:
        where = ", ".join(k.where for k in verdict.known if k.blob == key.asbytes())
        print(f"already trusted ({where}); nothing to do")
        return 0
    if verdict.status in (CHANGED, REVOKED):
        print(f"gpumon trust: refusing — {verdict.reason(host)}", file=sys.stderr)
        for known in verdict.known:
            print(
                f"  {known.where}: {known.key_type} {fingerprint(known.blob)}",
                file=sys.stderr,
            )
        return 1
    target = record_file(config)
    if not assume_yes:
        if not sys.stdin.isatty():
            print(
                f"not recorded: check the fingerprint with the server's admin (on the server: "
                f"`ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub`), then run "
                f"`gpumon trust {host} --yes`",
                file=sys.stderr,
            )
            return 1
        answer = input(f"Record it in {target} for {dest.known_hosts_name}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("not recorded")
            return 1
    try:
        append_known_host(target, dest.known_hosts_name, key)
    except OSError as e:
        print(f"gpumon trust: cannot write {target} ({e}); nothing recorded", file=sys.stderr)
        return 1
    print(f"recorded in {target}")
    return 0
