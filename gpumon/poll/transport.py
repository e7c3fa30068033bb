"""One SSH connection to one server, with a deadline on every stage.

Stages: connect (TCP) → banner → kex (key exchange + host key check) → auth → exec → read.
Each stage runs under an ``Attempt``: it records the stage and its deadline, and holds what must
be closed to unstick a blocked thread. The sweep aborts an overdue attempt from outside (closing
its socket and transport wakes every paramiko wait), so a server hung at any stage costs only its
own deadline. paramiko's own timeouts are set one second later as a backstop for callers that
run without a sweep (``gpumon trust``).

Auth is by key only — identity files and ssh-agent keys; never passwords, never a prompt.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import paramiko

from gpumon.config import PollConfig
from gpumon.keyfile import too_open
from gpumon.poll import result as codes
from gpumon.poll.hostkeys import CHANGED, REVOKED, TRUSTED, KnownHosts
from gpumon.poll.inventory import Destination, parse_jump
from gpumon.poll.proxy import ProxyCommandSocket

if TYPE_CHECKING:
    from gpumon.poll.stream import AgentStream

log = logging.getLogger(__name__)
# paramiko's own log lines (and tracebacks, e.g. when the sweep closes a hung transport on
# purpose) go here, quiet unless someone lowers this level: every failure is already in the
# ServerResult's reason.
SSH_LOG = "gpumon.poll.ssh"
logging.getLogger(SSH_LOG).setLevel(logging.CRITICAL)

# Keys tried when neither the config nor ~/.ssh/config names one (OpenSSH's defaults).
DEFAULT_IDENTITIES = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")
STDERR_KEEP = 64 * 1024  # bytes of the agent's stderr kept for the reason text
BACKSTOP_S = 1.0  # paramiko's own timeouts trail ours by this much
_TICK_S = 0.02  # how often a waiting worker re-checks its stage
IDLE_WAKE_S = 2.0  # how often an open connection's paramiko thread wakes with nothing to read
# Ciphers offered first. paramiko's own order starts with aes128-ctr + hmac-sha2-256, whose MAC
# it checks byte by byte in Python (util.constant_time_bytes_eq) on every packet it reads; an
# AEAD cipher has no separate MAC, so each packet costs one C call (bench/poll_sweep.py).
FAST_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


class PollFailure(Exception):
    """One server could not be read: a reason code (gpumon.poll.result), text and stage."""

    def __init__(self, code: str, reason: str, stage: str | None = None) -> None:
        super().__init__(reason)
        self.code, self.reason, self.stage = code, reason, stage


class ConnectionLost(Exception):
    """A kept-open connection died before the command ran (server restarted): re-open it."""


class Attempt:
    """One poll of one server: its stage, the stage's deadline, and what aborting must close."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.label = name  # the destination, once resolved
        self.address: str | None = None  # the IP dialled, once connected
        self.stage = "queued"
        self.stage_s = 0.0
        self.deadline = float("inf")
        self.where = ""  # e.g. " on jump host gw" while a ProxyJump hop is opened
        self.aborted = False
        self._lock = threading.Lock()
        self._held: list[Callable[[], object]] = []
        self._marks: list[tuple[str, float]] = []  # (stage, when it began), for -v

    def enter(self, stage: str, seconds: float) -> float:
        with self._lock:
            if self.aborted:
                raise PollFailure(codes.TIMEOUT, f"timed out at {self.stage}", self.stage)
            self.stage, self.stage_s = stage, seconds
            self.deadline = time.monotonic() + seconds
            self._mark(stage, f" (deadline {seconds:g} s)")
            return self.deadline

    def relabel(self, stage: str) -> None:
        """A new stage under the same deadline (banner → kex, exec → read)."""
        if stage != self.stage:
            self.stage = stage
            self._mark(stage, "")

    def _mark(self, stage: str, note: str) -> None:
        self._marks.append((stage + self.where, time.monotonic()))
        log.debug("%s: %s%s%s", self.name, stage, self.where, note)

    def stage_times(self) -> str:
        """'connect 0.3 ms, banner 2.1 ms, …': each stage this attempt went through, timed."""
        marks = [*self._marks, ("", time.monotonic())]
        return ", ".join(
            f"{stage} {(marks[i + 1][1] - when) * 1000:.1f} ms"
            for i, (stage, when) in enumerate(marks[:-1])
        )

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def overdue(self, now: float) -> bool:
        return now >= self.deadline

    def timeout_reason(self) -> str:
        return f"timed out at {self.stage}{self.where} ({self.stage_s:g} s)"

    def hold(self, close: Callable[[], object]) -> None:
        with self._lock:
            if self.aborted:
                _quietly(close)
                raise PollFailure(codes.TIMEOUT, self.timeout_reason(), self.stage)
            self._held.append(close)

    def release(self, close: Callable[[], object]) -> None:
        with self._lock:
            if close in self._held:
                self._held.remove(close)

    def abort(self) -> None:
        """Called by the sweep: close everything held so the worker thread ends soon."""
        with self._lock:
            self.aborted = True
            held, self._held = self._held, []
        for close in held:
            _quietly(close)

    def handover(self, keep: Callable[[], None], close: Callable[[], object]) -> None:
        """At the end: ``keep`` (e.g. back into the pool) unless aborted, else ``close``."""
        with self._lock:
            aborted = self.aborted
            if close in self._held:
                self._held.remove(close)
        if aborted:
            _quietly(close)
        else:
            keep()

    def check(self) -> None:
        if self.aborted:
            raise PollFailure(codes.TIMEOUT, self.timeout_reason(), self.stage)
        if time.monotonic() >= self.deadline:
            raise PollFailure(codes.TIMEOUT, self.timeout_reason(), self.stage)


def _quietly(close: Callable[[], object]) -> None:
    try:
        close()
    except Exception:  # closing a broken socket/transport may raise anything; it is gone
        log.debug("close failed", exc_info=True)


@dataclass
class CommandOutput:
    exit_status: int  # -1: the channel closed without an exit status (killed by a signal)
    stdout: bytes
    stderr: bytes
    too_large: bool = False  # stdout passed max_bytes: reading stopped there
    elapsed_s: float = 0.0


class KeyRing:
    """Private keys for auth: identity files parsed once, ssh-agent keys asked per connect."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (path, mtime, size) → the key, or why it is unusable
        self._files: dict[tuple[str, int, int], paramiko.PKey | str] = {}

    def candidates(self, dest: Destination) -> tuple[list[tuple[str, paramiko.PKey]], list[str]]:
        """(label, key) pairs in the order tried, and notes on keys that could not be used."""
        keys: list[tuple[str, paramiko.PKey]] = []
        notes: list[str] = []
        explicit = list(dest.identity_files)
        paths = explicit or [os.path.expanduser(p) for p in DEFAULT_IDENTITIES]
        for path in paths:
            loaded = self._load(path, required=bool(explicit))
            if isinstance(loaded, str):
                if loaded:
                    notes.append(loaded)
            else:
                keys.append((path, loaded))
        agent = self.agent_keys()
        seen = {k.asbytes() for _, k in keys}
        keys += [(f"ssh-agent key {k.fingerprint}", k) for k in agent if k.asbytes() not in seen]
        return keys, notes

    def agent_keys(self) -> list[paramiko.PKey]:
        if not os.environ.get("SSH_AUTH_SOCK"):
            return []
        try:
            # A fresh agent connection per server: signing over one shared connection from
            # several threads would interleave the agent protocol.
            return list(paramiko.Agent().get_keys())
        except (paramiko.SSHException, OSError) as e:
            log.warning("ssh-agent at SSH_AUTH_SOCK is unusable (%s); using key files only", e)
            return []

    def _load(self, path: str, required: bool) -> paramiko.PKey | str:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return f"identity file {path} does not exist" if required else ""
        except OSError as e:
            return f"identity file {path} is unreadable ({e.strerror})"
        problem = too_open(path, st)
        if problem:
            return f"identity file {problem}"
        # A replaced key file is read again (a chmod changes no mtime, but is checked above).
        stamp = (path, st.st_mtime_ns, st.st_size)
        with self._lock:
            if stamp in self._files:
                return self._files[stamp]
            try:
                loaded: paramiko.PKey | str = paramiko.PKey.from_path(path)
            except FileNotFoundError:
                loaded = f"identity file {path} does not exist" if required else ""
            except (paramiko.PasswordRequiredException, TypeError):
                loaded = (
                    f"identity file {path} is passphrase-protected: gpumon never prompts — "
                    "load it into ssh-agent (ssh-add) or use a key without a passphrase"
                )
            except (OSError, ValueError, paramiko.SSHException) as e:
                loaded = f"identity file {path} is unusable ({type(e).__name__}: {e})"
            self._files[stamp] = loaded
            return loaded


class Connection:
    """An authenticated transport to one server, kept open between sweeps."""

    def __init__(
        self,
        dest: Destination,
        transport: paramiko.Transport,
        peer_ip: str | None,
    ) -> None:
        self.dest = dest
        self.transport = transport
        self.peer_ip = peer_ip
        self.opened_at = time.monotonic()
        self.uses = 0
        # gpumon.poll.stream's: the kept `stream` channel, until when the agent is polled
        # one-shot (it has no `stream`), and which forced command answered ("ssh": the
        # dispatcher; "report": the old `gpumon-agent report --json`; None: unknown).
        self.stream: AgentStream | None = None
        self.oneshot_until = 0.0
        self.forced_command: str | None = None

    @property
    def alive(self) -> bool:
        return self.transport.is_active()

    def close(self) -> None:
        self.transport.close()

    def run(
        self, command: str, attempt: Attempt, timeout_s: float, max_bytes: int
    ) -> CommandOutput:
        """Run ``command``; read at most ``max_bytes`` of stdout, all within ``timeout_s``."""
        started = time.monotonic()
        channel = self.exec(command, attempt, timeout_s, max_bytes)
        try:
            attempt.relabel("read")
            out = read_output(channel, attempt, max_bytes)
            out.elapsed_s = time.monotonic() - started
            if out.exit_status == -1 and not out.stdout and not self.alive:
                raise ConnectionLost("connection closed while the command ran")
            return out
        finally:
            channel.close()

    def exec(
        self, command: str, attempt: Attempt, timeout_s: float, max_bytes: int
    ) -> paramiko.Channel:
        """A session channel running ``command`` (stage exec, under ``timeout_s``); the caller
        reads and closes it. Raises ConnectionLost when the transport died under it."""
        attempt.enter("exec", timeout_s)
        self.uses += 1
        try:
            # A window just over the limit: paramiko never buffers much more than we accept.
            channel = self.transport.open_session(
                window_size=max_bytes + 64 * 1024, timeout=timeout_s + BACKSTOP_S
            )
        except paramiko.ChannelException as e:
            raise PollFailure(
                codes.AGENT_FAILED, f"server refused a session ({e.text or e.code})", "exec"
            ) from None
        except (paramiko.SSHException, EOFError, OSError) as e:
            attempt.check()
            raise ConnectionLost(str(e) or type(e).__name__) from None
        try:
            channel.exec_command(command)
        except (paramiko.SSHException, EOFError, OSError) as e:
            channel.close()
            attempt.check()
            if not self.alive:
                raise ConnectionLost(str(e) or type(e).__name__) from None
            raise PollFailure(
                codes.AGENT_FAILED, f"server refused to run the command ({e})", "exec"
            ) from None
        return channel


def read_output(
    channel: paramiko.Channel,
    attempt: Attempt,
    max_bytes: int,
    stdout_so_far: bytes = b"",
    stderr_so_far: bytes = b"",
) -> CommandOutput:
    """A command's output on ``channel`` to its end and its exit status, within the attempt's
    deadline; stdout cut after ``max_bytes`` (``too_large``). ``*_so_far``: already read."""
    stdout = bytearray(stdout_so_far)
    stderr = bytearray(stderr_so_far[:STDERR_KEEP])
    if len(stdout) > max_bytes:
        return CommandOutput(-1, bytes(stdout[: max_bytes + 1]), bytes(stderr), True)

    def drain_stderr() -> None:
        while channel.recv_stderr_ready():
            chunk = channel.recv_stderr(32768)
            if not chunk:
                return
            if len(stderr) < STDERR_KEEP:
                stderr.extend(chunk[: STDERR_KEEP - len(stderr)])

    while True:
        remaining = attempt.remaining()
        if remaining <= 0 or attempt.aborted:
            raise PollFailure(codes.TIMEOUT, attempt.timeout_reason(), "read")
        channel.settimeout(remaining)
        try:
            chunk = channel.recv(65536)
        except socket.timeout:
            raise PollFailure(codes.TIMEOUT, attempt.timeout_reason(), "read") from None
        drain_stderr()
        if not chunk:
            break
        stdout.extend(chunk)
        if len(stdout) > max_bytes:
            # Stop here: the rest is not wanted (closing the channel stops the sender).
            return CommandOutput(-1, bytes(stdout[: max_bytes + 1]), bytes(stderr), True)
    # stdout ended; the exit status arrives with (or just before) the channel close.
    if not channel.status_event.wait(max(0.0, attempt.remaining())):
        raise PollFailure(codes.TIMEOUT, attempt.timeout_reason(), "read")
    drain_stderr()
    return CommandOutput(channel.exit_status, bytes(stdout), bytes(stderr))


# --- opening a connection -----------------------------------------------------------------


@dataclass
class Opener:
    """What opening connections needs: timeouts, trusted keys, our keys, open jump hosts."""

    poll: PollConfig
    known_hosts: KnownHosts
    keys: KeyRing = field(default_factory=KeyRing)
    resolve_jump: Callable[[str], Destination] | None = None  # hop spec → Destination
    jumps: dict[str, Connection] = field(default_factory=dict)
    _jump_locks: dict[str, threading.Lock] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def open(self, dest: Destination, attempt: Attempt) -> Connection:
        return self._open(dest, attempt, self.open_jumps(dest, attempt), final=True)

    def close(self) -> None:
        with self._lock:
            jumps, self.jumps = list(self.jumps.values()), {}
        for conn in jumps:
            _quietly(conn.close)

    def open_jumps(self, dest: Destination, attempt: Attempt) -> Connection | None:
        """The last hop of dest's ProxyJump chain, opened (and kept) hop by hop, to reach
        ``dest`` through; None when it has no ProxyJump."""
        via: Connection | None = None
        chain = ""
        for hop in dest.proxy_jump:
            chain = f"{chain},{hop}" if chain else hop
            with self._lock:
                lock = self._jump_locks.setdefault(chain, threading.Lock())
            with lock:
                conn = self.jumps.get(chain)
                if conn is None or not conn.alive:
                    hop_dest = self._hop_destination(hop, via_hop=via is not None)
                    saved = attempt.where
                    attempt.where = f" on jump host {hop}"
                    try:
                        conn = self._open(hop_dest, attempt, via)
                    finally:
                        attempt.where = saved
                    self.jumps[chain] = conn
            via = conn
        return via

    def _hop_destination(self, hop: str, via_hop: bool = False) -> Destination:
        user, host, port = parse_jump(hop)
        base = self.resolve_jump(host) if self.resolve_jump else Destination(name=host, host=host)
        base.name = hop
        base.proxy_jump = []  # a hop's own ProxyJump would recurse; the chain is explicit
        if via_hop and base.proxy_command:
            raise PollFailure(
                codes.CONFIG_ERROR,
                f"jump host {hop} has a ProxyCommand in the ssh config, but is reached through "
                "the hop before it; only the first hop of a ProxyJump chain may use one",
                "connect",
            )
        if user:
            base.user = user
        if port:
            base.port = port
        return base

    def _open(
        self, dest: Destination, attempt: Attempt, via: Connection | None, final: bool = False
    ) -> Connection:
        poll = self.poll
        sock, peer_ip = _connect(dest, attempt, poll.connect_timeout_s, via)
        if final:  # not a jump host's: that address is not the server's
            attempt.address = peer_ip
        transport = _transport(sock)
        try:
            attempt.hold(transport.close)
        except PollFailure:
            _quietly(sock.close)
            raise
        ok = False
        try:
            _handshake(transport, dest, attempt, poll.handshake_timeout_s, self.known_hosts)
            _authenticate(transport, dest, attempt, poll.auth_timeout_s, self.keys)
            ok = True
            if isinstance(sock, socket.socket):
                # paramiko's thread wakes every 0.1 s (its socket timeout) to look for a close
                # nobody asked of a kept connection: 640 wake-ups a second, each taking the
                # GIL, for 64 idle servers. Every wait of ours is on an event that close()
                # sets at once; only that thread's own exit waits for this timeout.
                sock.settimeout(IDLE_WAKE_S)
            return Connection(dest, transport, peer_ip)
        finally:
            attempt.release(transport.close)
            if not ok:
                _quietly(transport.close)


def _transport(sock: socket.socket | paramiko.Channel) -> paramiko.Transport:
    transport = paramiko.Transport(sock)
    transport.set_log_channel(SSH_LOG)
    return transport


def _connect(
    dest: Destination, attempt: Attempt, timeout_s: float, via: Connection | None
) -> tuple[socket.socket | paramiko.Channel, str | None]:
    attempt.enter("connect", timeout_s)
    target = f"{dest.host} port {dest.port}"
    if via is not None:
        try:
            channel = via.transport.open_channel(
                "direct-tcpip", (dest.host, dest.port), ("127.0.0.1", 0), timeout=timeout_s
            )
        except paramiko.ChannelException as e:
            raise PollFailure(
                codes.UNREACHABLE,
                f"jump host {via.dest.name} could not reach {target} ({e.text or e.code})",
                "connect",
            ) from None
        except (paramiko.SSHException, EOFError, OSError) as e:
            attempt.check()
            raise PollFailure(
                codes.UNREACHABLE, f"jump host {via.dest.name} failed ({e})", "connect"
            ) from None
        return channel, _ip_literal(dest.host)
    if dest.proxy_command:
        return _spawn_proxy(dest, attempt), None
    sock: socket.socket | None = None
    try:
        sock = socket.create_connection((dest.host, dest.port), timeout=timeout_s)
        attempt.hold(sock.close)
    except ConnectionRefusedError:
        raise PollFailure(
            codes.REFUSED, f"connection refused ({target}: is sshd running?)", "connect"
        ) from None
    except socket.timeout:
        raise PollFailure(codes.TIMEOUT, attempt.timeout_reason(), "connect") from None
    except socket.gaierror as e:
        raise PollFailure(
            codes.UNREACHABLE, f"cannot resolve {dest.host} ({e.strerror})", "connect"
        ) from None
    except OSError as e:
        attempt.check()
        raise PollFailure(
            codes.UNREACHABLE, f"unreachable ({target}: {e.strerror or e})", "connect"
        ) from None
    # Small request/response packets: Nagle would hold each for the peer's delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    attempt.release(sock.close)
    return sock, sock.getpeername()[0]


def _spawn_proxy(dest: Destination, attempt: Attempt) -> ProxyCommandSocket:
    """The ProxyCommand started; the banner stage then waits for the server through it."""
    assert dest.proxy_command
    try:
        proxy = ProxyCommandSocket(dest.proxy_command)
    except paramiko.ProxyCommandFailure as e:
        raise PollFailure(
            codes.UNREACHABLE, f"cannot start ProxyCommand {dest.proxy_command!r} ({e})", "connect"
        ) from None
    attempt.hold(proxy.close)  # aborted meanwhile: closed at once, and PollFailure
    attempt.release(proxy.close)  # from here the transport holds it (its close ends this)
    return proxy


def _ip_literal(host: str) -> str | None:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return host
        except OSError:
            continue
    return None


def _preferred(available: tuple[str, ...], first: tuple[str, ...]) -> tuple[str, ...]:
    """``available`` with those of ``first`` it has moved to the front, in that order."""
    front = tuple(a for a in first if a in available)
    return front + tuple(a for a in available if a not in front)


def _negotiate(
    transport: paramiko.Transport,
    dest: Destination,
    attempt: Attempt,
    timeout_s: float,
    known_hosts: KnownHosts,
) -> paramiko.PKey:
    """Banner and key exchange; the server's host key (not yet checked)."""
    attempt.enter("banner", timeout_s)
    transport.banner_timeout = timeout_s + BACKSTOP_S
    transport.handshake_timeout = timeout_s + BACKSTOP_S
    options = transport.get_security_options()
    options.key_types = known_hosts.preferred_algorithms(
        dest.known_hosts_name, tuple(options.key_types)
    )
    options.ciphers = _preferred(tuple(options.ciphers), FAST_CIPHERS)
    done = threading.Event()
    transport.start_client(event=done)
    while not done.wait(_TICK_S):
        if transport.remote_version:
            attempt.relabel("kex")
        if not transport.is_active():
            break
        attempt.check()
    if not transport.is_active() or not transport.initial_kex_done:
        attempt.check()
        stage = "kex" if transport.remote_version else "banner"
        error = transport.get_exception()
        proxy = transport.sock if isinstance(transport.sock, ProxyCommandSocket) else None
        ended = proxy.failure() if proxy is not None else None
        if ended:  # the proxy's own words say more than "closed before the banner"
            raise PollFailure(codes.UNREACHABLE, f"{ended} (at {stage})", stage)
        raise PollFailure(codes.UNREACHABLE, _handshake_reason(stage, error), stage)
    attempt.relabel("kex")
    return transport.get_remote_server_key()


def _handshake(
    transport: paramiko.Transport,
    dest: Destination,
    attempt: Attempt,
    timeout_s: float,
    known_hosts: KnownHosts,
) -> None:
    """Negotiate, then go no further unless the host key is the one known_hosts holds."""
    key = _negotiate(transport, dest, attempt, timeout_s, known_hosts)
    verdict = known_hosts.check(dest.known_hosts_name, key.get_name(), key.asbytes())
    if verdict.status != TRUSTED:
        transport.close()
        text = verdict.reason(dest.name)
        if verdict.status in (CHANGED, REVOKED):
            log.warning("%s (%s): %s", dest.name, dest.label, text)
            raise PollFailure(codes.HOST_KEY_CHANGED, text, "kex")
        raise PollFailure(codes.HOST_KEY_UNKNOWN, text, "kex")


def _handshake_reason(stage: str, error: BaseException | None) -> str:
    detail = f"{error}" if error is not None and str(error) else type(error).__name__
    if stage == "banner":
        if error is None or isinstance(error, EOFError) or "EOF" in detail:
            return "closed the connection before the SSH banner (sshd overloaded: MaxStartups?)"
        if "protocol version" in detail:
            return f"not an SSH server ({detail})"
        return f"no SSH banner ({detail})"
    if "no acceptable host key" in detail.lower() or "incompatible" in detail.lower():
        return f"key exchange failed: no common algorithm ({detail})"
    return f"key exchange failed ({detail})"


def _authenticate(
    transport: paramiko.Transport,
    dest: Destination,
    attempt: Attempt,
    timeout_s: float,
    keys: KeyRing,
) -> None:
    attempt.enter("auth", timeout_s)
    transport.auth_timeout = timeout_s + BACKSTOP_S
    candidates, notes = keys.candidates(dest)
    if not candidates:
        why = "; ".join(notes) or "no identity file and no ssh-agent key"
        raise PollFailure(
            codes.AUTH_FAILED,
            f"no key to log in as {dest.user} ({why}) — set identity_file for this server "
            "or [poll] identity_files, or load a key into ssh-agent",
            "auth",
        )
    tried: list[str] = []
    for label, key in candidates:
        attempt.check()
        tried.append(os.path.basename(label) if label.startswith("/") else label)
        try:
            more = transport.auth_publickey(dest.user, key)
        except paramiko.BadAuthenticationType as e:
            raise PollFailure(
                codes.AUTH_FAILED,
                f"{dest.user}@{dest.host} does not accept keys (allows: "
                f"{', '.join(e.allowed_types) or 'nothing'}); gpumon never uses passwords",
                "auth",
            ) from None
        except paramiko.AuthenticationException:
            attempt.check()
            if not transport.is_active():
                raise PollFailure(
                    codes.AUTH_FAILED,
                    f"server closed the connection during auth as {dest.user} "
                    f"(tried {', '.join(tried)}; too many keys for sshd MaxAuthTries?)",
                    "auth",
                ) from None
            continue
        except (paramiko.SSHException, EOFError, OSError) as e:
            attempt.check()
            raise PollFailure(codes.AUTH_FAILED, f"auth failed ({e})", "auth") from None
        if more:
            raise PollFailure(
                codes.AUTH_FAILED,
                f"server wants a second factor ({', '.join(more)}) after the key; "
                "gpumon logs in with a key alone",
                "auth",
            )
        if transport.is_authenticated():
            return
    extra = f"; {'; '.join(notes)}" if notes else ""
    raise PollFailure(
        codes.AUTH_FAILED,
        f"key rejected for {dest.user}@{dest.host} (tried {', '.join(tried)}{extra}) — add the "
        "central public key to that user's authorized_keys (deploy/ssh/README.md)",
        "auth",
    )


def fetch_host_key(dest: Destination, opener: Opener) -> paramiko.PKey:
    """Connect and key-exchange only (for `gpumon trust`): the server's host key, unchecked.
    Jump hosts are opened through ``opener`` (and kept there: its owner closes it)."""
    attempt = Attempt(dest.name)
    poll = opener.poll
    via = opener.open_jumps(dest, attempt)
    sock, _ = _connect(dest, attempt, poll.connect_timeout_s, via)
    transport = _transport(sock)
    try:
        return _negotiate(transport, dest, attempt, poll.handshake_timeout_s, opener.known_hosts)
    finally:
        transport.close()
