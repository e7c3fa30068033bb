"""Server name → where and how to dial it.

Each field comes from the first of: the server's ``[servers.NAME]`` table, its ``~/.ssh/config``
alias (``[poll] ssh_config``), ``[poll]`` defaults, and finally the name itself on port 22 —
so a lab that already reaches its servers with ``ssh NAME`` needs no per-server config. From the
ssh config: HostName, Port, User, IdentityFile, ProxyJump, ProxyCommand and HostKeyAlias.
"""

from __future__ import annotations

import getpass
import ipaddress
import os
import re
from dataclasses import dataclass, field

import paramiko

from gpumon.config import Config, ConfigError, ServerEntry


@dataclass(frozen=True)
class Jump:
    """One ProxyJump hop (``[user@]host[:port]``), itself resolved like a server."""

    spec: str


@dataclass
class Destination:
    name: str  # as in the sheet / config
    host: str  # what is dialled (and looked up in known_hosts)
    port: int = 22
    user: str = ""
    identity_files: list[str] = field(default_factory=list)  # tried in this order
    proxy_jump: list[str] = field(default_factory=list)  # hops, outermost first
    command: str = "gpumon-agent report --json"
    local: bool = False  # read the agent in-process, no SSH
    host_key_alias: str | None = None  # ssh config HostKeyAlias: the known_hosts name
    proxy_command: str | None = None  # ssh config ProxyCommand, tokens expanded

    @property
    def label(self) -> str:
        """What ServerResult.destination shows: ``user@host:port`` (or ``local``)."""
        if self.local:
            return "local"
        via = f" via {','.join(self.proxy_jump)}" if self.proxy_jump else ""
        if self.proxy_command:
            shown = self.proxy_command
            shown = shown if len(shown) <= 120 else shown[:119] + "…"
            via = f" via ProxyCommand {shown!r}"
        return f"{self.user}@{self.host}:{self.port}{via}"

    @property
    def known_hosts_name(self) -> str:
        """The name known_hosts files use: ``host``, or ``[host]:port`` off port 22."""
        host = self.host_key_alias or self.host
        return host if self.port == 22 else f"[{host}]:{self.port}"


class SshConfigFile:
    """``~/.ssh/config``, parsed once (re-read when it changes); absent means empty."""

    def __init__(self, path: str) -> None:
        self.path = os.path.expanduser(path)
        self._stamp: tuple[int, int] | None = None
        self._parsed: paramiko.SSHConfig | None = None

    def lookup(self, name: str) -> dict[str, object]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise ConfigError(f"{self.path}: cannot read the ssh config ({e})") from None
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                self._parsed = paramiko.SSHConfig.from_path(self.path)
            except (OSError, UnicodeDecodeError, ValueError, paramiko.ConfigParseError) as e:
                raise ConfigError(
                    f"{self.path}: cannot parse the ssh config ({e}) — fix it, or point "
                    "[poll] ssh_config elsewhere"
                ) from None
            self._stamp = stamp
        assert self._parsed is not None
        try:
            found = dict(self._parsed.lookup(name))
        except Exception as e:  # e.g. `Match exec` without the `invoke` package
            raise ConfigError(
                f"{self.path}: looking up Host {name} failed ({type(e).__name__}: {e})"
            ) from None
        # paramiko fills in HostName = the name itself; keep "not set" distinguishable.
        if found.get("hostname") == name:
            found.pop("hostname")
        return found


def resolve(config: Config, name: str, ssh_config: SshConfigFile | None = None) -> Destination:
    """Where ``name`` is: config table first, then ssh config, then the name itself."""
    entry = config.servers.get(name) or ServerEntry(name=name)
    poll = config.poll
    command = entry.command or poll.command
    if entry.local:
        return Destination(name=name, host="localhost", command=command, local=True)
    ssh = (ssh_config or SshConfigFile(poll.ssh_config)).lookup(name)

    host = entry.host or str(ssh.get("hostname") or name)
    port = entry.port or _port(ssh.get("port"), name, poll.ssh_config)
    user = entry.user or str(ssh.get("user") or "") or poll.user or _local_user()
    identity_files: list[str] = []
    for path in (
        ([entry.identity_file] if entry.identity_file else [])
        + list(ssh.get("identityfile") or [])  # type: ignore[arg-type]
        + list(poll.identity_files)
    ):
        full = os.path.expanduser(path)
        if full not in identity_files:
            identity_files.append(full)
    jump_spec = entry.proxy_jump or str(ssh.get("proxyjump") or "")
    proxy_jump = [] if jump_spec.lower() in ("", "none") else _split_jumps(jump_spec)
    # paramiko stores "ProxyCommand none" as None; a [servers] proxy_jump overrides it.
    proxy_command = None if entry.proxy_jump else (str(ssh.get("proxycommand") or "") or None)
    if proxy_command and not _plain_host(host):
        # The name may come from a sheet cell, and %h puts it into a shell command line.
        raise ConfigError(
            f"not running the ProxyCommand of {poll.ssh_config} for {host!r}: not a plain host "
            "name (letters, digits, '.', '-', '_', not starting with '-'), so it could change "
            "the command"
        )
    if proxy_command and proxy_jump:
        raise ConfigError(
            f"{poll.ssh_config}: Host {name} has both ProxyJump and ProxyCommand; OpenSSH uses "
            "whichever comes first, which gpumon cannot tell — keep one (or set the other to "
            "none for this host)"
        )
    alias = ssh.get("hostkeyalias")
    return Destination(
        name=name,
        host=host,
        port=port,
        user=user,
        identity_files=identity_files,
        proxy_jump=proxy_jump,
        command=command,
        host_key_alias=str(alias) if alias else None,
        proxy_command=proxy_command,
    )


_HOST_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*\Z")


def _plain_host(host: str) -> bool:
    """A host name or IP literal: nothing a shell or the proxy program would read as more."""
    if _HOST_NAME.match(host) and len(host) <= 253:
        return True
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def parse_jump(spec: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]`` (or ``[user@][v6addr]:port``) → (user, host, port)."""
    user, _, rest = spec.rpartition("@")
    port: int | None = None
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        if tail.startswith(":"):
            port = _jump_port(tail[1:], spec)
    elif rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
        port = _jump_port(port_text, spec)
    else:
        host = rest
    if not host:
        raise ConfigError(f"ProxyJump {spec!r}: no host — write [user@]host[:port]")
    return (user or None), host, port


def _split_jumps(spec: str) -> list[str]:
    hops = [hop.strip() for hop in spec.split(",") if hop.strip()]
    for hop in hops:
        if hop.startswith("ssh://"):
            raise ConfigError(f"ProxyJump {hop!r}: write it as [user@]host[:port]")
        parse_jump(hop)
    return hops


def _jump_port(text: str, spec: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"ProxyJump {spec!r}: {text!r} is not a TCP port (1-65535)")
    return int(text)


def _port(value: object, name: str, ssh_config: str) -> int:
    if value is None:
        return 22
    text = str(value)
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"{ssh_config}: Host {name}: Port {text!r} is not a TCP port (1-65535)")
    return int(text)


def _local_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "root" if os.geteuid() == 0 else str(os.geteuid())
