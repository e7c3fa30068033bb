"""The trainer hook: claim GPUs for a training job, so the sheet shows who runs what where.

Python::

    from gpumon_agent.hook import claim

    with claim(gpus="auto", count=1, job="kws ch32 do0.75") as c:  # before touching torch.cuda
        ...                                       # CUDA_VISIBLE_DEVICES now names c.gpu_indices
        c.update(epoch=3, loss=0.41, val_acc=0.93)

Any command: ``gpumon claim --gpus auto --job NAME -- CMD ARGS…`` (``run_claimed``).

Entering the claim picks and records GPUs (claims.claim_gpus: under the registry lock), sets
CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER=PCI_BUS_ID, and, in the main thread, installs SIGINT
and SIGTERM handlers that chain to the ones before. Leaving it — normally, by an exception, by
SIGINT (KeyboardInterrupt) or SIGTERM — releases the claim and restores the environment and the
handlers. docs/claims.md is the user's guide.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import threading
import warnings
from types import FrameType
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Union

from gpumon_agent.claims import (
    DEFAULT_LOCK_TIMEOUT_S,
    ClaimError,
    ClaimRecord,
    ClaimRegistry,
    GpuRequest,
    InvalidClaimFile,
    check_owner_process,
    claim_gpus,
    clean_progress,
    new_record,
    parse_gpu_request,
)
from gpumon_agent.report import Gpu, utc_iso
from gpumon_agent.settings import AgentSettings, SettingsError
from gpumon_agent.text import cut

# Set for the command under `gpumon claim`: a claim() inside it adopts that claim.
CLAIM_FILE_ENV = "GPUMON_CLAIM_FILE"
_HANDLED = (signal.SIGINT, signal.SIGTERM)
_ENV_KEYS = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", CLAIM_FILE_ENV)

Handler = Union[Callable[[int, Optional[FrameType]], Any], int, None]


class CannotRun(Exception):
    """The command under `gpumon claim` could not be started. ``status`` is the shell's for it:
    127 not found, 126 found but not runnable."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class GpusUnavailable(ClaimError):
    """NVML cannot be read (no driver, CPU-only machine) or there are no GPUs. ``reason`` is
    the bare cause; the message adds what a Python caller can do."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"{reason} — to run on the CPU instead, use claim(..., required=False)")


def sample_gpus(settings: AgentSettings) -> List[Gpu]:
    """This server's GPUs with their processes, read from NVML now (gpumon_agent.nvml).

    Raises GpusUnavailable when NVML cannot be read or finds no GPU."""
    from gpumon_agent.nvml import NvmlReader

    reader = NvmlReader()
    try:
        sample = reader.read()
    finally:
        reader.close()
    if not sample.nvml.available:
        raise GpusUnavailable(
            f"cannot read the GPUs through NVML ({sample.nvml.error or 'no NVIDIA driver'}); "
            "claiming GPUs needs the NVIDIA driver"
        )
    if not sample.gpus:
        raise GpusUnavailable("NVML finds no GPU on this server")
    from gpumon_agent.procs import name_processes

    name_processes(sample.gpus)  # for the message that says who uses a GPU
    return sample.gpus


class Claim:
    """A GPU claim held for a ``with`` block. See ``claim()`` for the arguments.

    Inside the block: ``gpu_indices`` and ``gpu_uuids`` (empty for a CPU job),
    ``cuda_visible_devices`` (as set in the environment), ``record`` (the claim file's content;
    None when ``required=False`` fell back to the CPU unrecorded) and ``update(**progress)``.
    ``cpu=True`` records a CPU claim: no GPU, shown in the server's Job cell."""

    def __init__(
        self,
        gpus: Union[str, int, Sequence[Union[int, str]], None] = "auto",
        count: int = 1,
        job: Optional[str] = None,
        required: bool = True,
        settings: Optional[AgentSettings] = None,
        lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
        command: Optional[str] = None,
        cpu: bool = False,
    ) -> None:
        self.cpu = cpu
        if cpu and gpus not in ("auto", None):
            raise ClaimError(f"claim(cpu=True) claims no GPU; leave out gpus={gpus!r}")
        self.request: GpuRequest = None if cpu else parse_gpu_request(gpus)
        self.count = count if self.request is None else len(self.request)
        self.job = job
        self.required = required
        self.settings = settings
        self.lock_timeout_s = lock_timeout_s
        self.command = command
        self.gpu_indices: List[int] = []
        self.gpu_uuids: List[str] = []
        self.cuda_visible_devices: Optional[str] = None
        self.record: Optional[ClaimRecord] = None
        self.adopted = False  # the claim of an enclosing `gpumon claim`, not ours to release
        self._registry: Optional[ClaimRegistry] = None
        self._saved_env: Dict[str, Optional[str]] = {}
        self._saved_handlers: Dict[int, Handler] = {}
        self._entered = False

    # -- the with block -------------------------------------------------------------------

    def __enter__(self) -> Claim:
        if self._entered:
            raise ClaimError("a Claim can be entered once; make a new claim()")
        self._entered = True
        self._install_handlers()
        try:
            self._acquire()
            self._set_env()
        except BaseException:
            self._release()
            self._restore_handlers()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self._release()
            self._restore_env()
        finally:
            self._restore_handlers()

    # -- what trainers call ---------------------------------------------------------------

    def update(self, **progress: Any) -> None:
        """Merge ``progress`` (epoch, loss, accuracy…) into the claim; the sheet shows it.

        Values must be JSON-able (numpy/torch scalars are converted; NaN becomes "nan"); the
        whole is capped at 4 KiB (ValueError beyond). One small file write per call: call it
        per epoch or every few seconds, not per batch. A CPU-only claim ignores it. If the
        registry cannot be written, this warns (RuntimeWarning) and training goes on."""
        record = self.record
        if record is None or self._registry is None:
            return
        merged = clean_progress(dict(record.progress, **progress))
        record.progress = merged
        record.updated_at = utc_iso()
        try:
            self._registry.rewrite(record)
        except ClaimError as e:
            warnings.warn(f"gpumon: progress not recorded: {e}", RuntimeWarning, stacklevel=2)

    @property
    def active(self) -> bool:
        return self.record is not None

    # -- acquiring and releasing ----------------------------------------------------------

    def _acquire(self) -> None:
        try:
            settings = self.settings or AgentSettings.from_env()
        except SettingsError as e:  # a trainer gets a ClaimError, never SystemExit
            raise ClaimError(f"gpumon: {e}") from None
        self._registry = ClaimRegistry.for_settings(settings)
        if self._adopt():
            return
        command = self.command if self.command is not None else _own_command()
        job = self.job or cut(command, 80)
        if self.cpu:
            self._claim_cpu(job, command)
            return
        try:
            gpus = sample_gpus(settings)
        except GpusUnavailable:
            if self.required:
                raise
            self._fall_back_to_cpu(job, command)
            return
        self._registry.ensure()
        self.record = claim_gpus(
            self._registry, gpus, self.request, self.count, job, command, self.lock_timeout_s
        )
        self.job = self.record.job
        self.gpu_indices = [g.index for g in self.record.gpus]
        self.gpu_uuids = [g.uuid for g in self.record.gpus if g.uuid]
        by_uuid = self.request is not None and all(isinstance(r, str) for r in self.request)
        if by_uuid and len(self.gpu_uuids) == len(self.gpu_indices):
            self.cuda_visible_devices = ",".join(self.gpu_uuids)
        else:
            self.cuda_visible_devices = ",".join(str(i) for i in self.gpu_indices)

    def _claim_cpu(self, job: str, command: str, create: bool = True) -> None:
        """A CPU claim: no GPU to choose, so no allocation lock; CUDA sees no GPU."""
        assert self._registry is not None
        self._registry.ensure(create)
        record = new_record(job, command, [], cpu=True)
        self._registry.create(record)
        self.record = record
        self.job = record.job
        self.cuda_visible_devices = ""

    def _fall_back_to_cpu(self, job: str, command: str) -> None:
        """required=False on a machine without usable GPUs: the trainer runs on the CPU, seen as
        a CPU claim where a registry exists (a server with the agent); where none exists (a
        laptop, CI) nothing is made and nothing recorded."""
        self.cuda_visible_devices = ""  # the trainer sees no GPU and runs on the CPU
        assert self._registry is not None
        if not os.path.lexists(self._registry.path):
            return
        try:
            self._claim_cpu(job, command, create=False)
        except ClaimError as e:  # an unsafe or full registry: run anyway, but say so
            warnings.warn(f"gpumon: CPU job not recorded: {e}", RuntimeWarning, stacklevel=4)

    def _adopt(self) -> bool:
        """Inside `gpumon claim`: use its claim (same GPUs, progress goes to its file) rather
        than claiming more GPUs. Only a live claim of this user by an ancestor process counts."""
        path = os.environ.get(CLAIM_FILE_ENV)
        if not path or self._registry is None:
            return False
        if os.path.realpath(os.path.dirname(path)) != os.path.realpath(self._registry.path):
            return False  # another registry's claim: not one the agent here sees
        try:
            record = self._registry.read(path)
        except InvalidClaimFile:
            return False
        if record.uid != os.geteuid() or check_owner_process(record) is not None:
            return False
        if record.pid not in _ancestors():
            return False
        held = [(g.index, g.uuid) for g in record.gpus]
        if record.cpu and self.request is not None:
            raise ClaimError(
                "this process runs under `gpumon claim --cpu`, a CPU-only job: it holds no GPU; "
                "run it under `gpumon claim --gpus …` to use GPUs"
            )
        if self.request is not None:
            wanted = set(self.request)
            if not all(i in wanted or u in wanted for i, u in held) or len(held) != len(wanted):
                raise ClaimError(
                    f"this process runs under `gpumon claim`, which holds GPU(s) "
                    f"{','.join(str(i) for i, _ in held)}; ask for gpus='auto' (or those) here"
                )
        self.record = record
        self.adopted = True
        self.job = record.job
        self.gpu_indices = [i for i, _ in held]
        self.gpu_uuids = [u for _, u in held if u]
        self.cuda_visible_devices = os.environ.get("CUDA_VISIBLE_DEVICES")
        if record.cpu:
            self.cuda_visible_devices = ""  # the enclosing job is CPU-only whatever was set
        elif self.cuda_visible_devices is None:
            self.cuda_visible_devices = ",".join(str(i) for i in self.gpu_indices)
        return True

    def _release(self) -> None:
        record, self.record = self.record, None
        if record is None or self.adopted or self._registry is None:
            return
        with contextlib.suppress(ClaimError):  # gone already, or root removed it
            self._registry.release(record)

    # -- environment ----------------------------------------------------------------------

    def _set_env(self) -> None:
        _warn_if_cuda_initialized()
        self._saved_env = {k: os.environ.get(k) for k in _ENV_KEYS}
        if self.cuda_visible_devices is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = self.cuda_visible_devices
            # NVML numbers GPUs in PCI bus order; CUDA's default order is "fastest first".
            os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        if self.record is not None:
            # Child processes that claim (launcher workers, `gpumon claim` inside) adopt this.
            os.environ[CLAIM_FILE_ENV] = self.record.path

    def _restore_env(self) -> None:
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env = {}

    # -- signals --------------------------------------------------------------------------

    def _install_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python delivers signals to the main thread only; see docs/claims.md
        for signum in _HANDLED:
            previous = signal.getsignal(signum)
            if previous is None:  # installed outside Python: cannot chain to it
                continue
            self._saved_handlers[signum] = previous
            signal.signal(signum, self._on_signal)

    def _restore_handlers(self) -> None:
        for signum, previous in self._saved_handlers.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(signum, previous)  # type: ignore[arg-type]
        self._saved_handlers = {}

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        previous = self._saved_handlers.get(signum, signal.SIG_DFL)
        if previous == signal.SIG_IGN:
            return
        if callable(previous):
            # Python's SIGINT handler raises KeyboardInterrupt; a framework's SIGTERM handler
            # may stop training gracefully. Either way the with block releases as it unwinds.
            previous(signum, frame)
            return
        # The default action ends the process at once, skipping __exit__: release first, then
        # die of the same signal so the parent sees the conventional status (128 + signum).
        self._release()
        self._restore_env()
        self._restore_handlers()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def claim(
    gpus: Union[str, int, Sequence[Union[int, str]], None] = "auto",
    count: int = 1,
    job: Optional[str] = None,
    required: bool = True,
    settings: Optional[AgentSettings] = None,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    command: Optional[str] = None,
    cpu: bool = False,
) -> Claim:
    """Claim GPUs for the ``with`` block: ``with claim(gpus="auto", count=1, job="…") as c:``.

    gpus: "auto" (``count`` free GPUs: no process, no live claim, least busy first), or
      indices / UUIDs: [0, 2], "0,2", ["GPU-…"].
    job: the name the sheet shows (default: this process's command line).
    required: False lets a machine without a usable NVIDIA driver run the block on the CPU:
      CUDA_VISIBLE_DEVICES="" and, where the claims registry exists (the agent runs here), a
      CPU claim as with cpu=True; elsewhere nothing is recorded. (Busy GPUs still raise.)
    settings: where the registry is (default: AgentSettings.from_env(), GPUMON_CLAIMS_DIR).
    lock_timeout_s: the longest wait for the registry lock.
    cpu: True for a CPU-only job: no GPU is claimed (and NVML is not read), CUDA_VISIBLE_DEVICES
      is "", and the claim shows in the server's Job cell as "USER: JOB (CPU)". Leave gpus
      at its default.

    Raises ClaimError (NoFreeGpu, LockTimeout, RegistryError, GpusUnavailable) with a message
    saying what to do. Enter it before the first use of CUDA (torch.cuda…): CUDA reads
    CUDA_VISIBLE_DEVICES once, when it initializes."""
    return Claim(
        gpus=gpus,
        count=count,
        job=job,
        required=required,
        settings=settings,
        lock_timeout_s=lock_timeout_s,
        command=command,
        cpu=cpu,
    )


# --- `gpumon claim -- CMD` ---------------------------------------------------------------------

# Relayed to the command. SIGCHLD only wakes the wait.
_RELAYED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


def run_claimed(
    cmd: Sequence[str],
    gpus: Union[str, Sequence[Union[int, str]], None] = "auto",
    count: int = 1,
    job: Optional[str] = None,
    settings: Optional[AgentSettings] = None,
    cpu: bool = False,
) -> int:
    """Run ``cmd`` with GPUs (``cpu``: no GPU, a CPU claim) claimed for it; the claim is
    released when it ends.

    Returns the command's exit status, 128 + N when a signal N killed it, or 128 + N when signal
    N came before the command started. Raises ClaimError (GpusUnavailable, NoFreeGpu,
    LockTimeout, …) when it could not claim, CannotRun when the command cannot be started; the
    `gpumon claim` command (gpumon_agent.cli) turns those into its message and exit status."""
    command = shlex.join(cmd)
    # Blocked from the start, so that every thread made from here on (NVML's workers) blocks
    # them too and they wait for sigtimedwait below instead of running a handler somewhere.
    waited = set(_RELAYED) | {signal.SIGCHLD}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    try:
        with claim(
            gpus=gpus,
            count=count,
            job=job or cut(command, 80),
            settings=settings,
            command=command,
            cpu=cpu,
        ):
            early = signal.sigpending() & set(_RELAYED)
            if early:  # told to stop while claiming: do not start the command at all
                return 128 + min(early)
            return _run_child(list(cmd), dict(os.environ), waited, old_mask)
    finally:
        # Whatever is still pending was meant for the command, which has ended.
        pending = signal.sigpending() & waited
        while pending and signal.sigtimedwait(pending, 0) is not None:
            pending = signal.sigpending() & waited
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _run_child(cmd: List[str], env: Dict[str, str], waited: Set[int], old_mask: Set[int]) -> int:
    """Run the command and wait, relaying signals sent to us with kill(2). Signals the kernel
    generates (the terminal's ^C, hangup) reach the whole foreground process group, the
    command included, so relaying those would deliver them twice. ``waited`` is blocked."""

    def child_mask() -> None:  # the command starts with the signal mask we were given
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    try:
        proc = subprocess.Popen(cmd, env=env, preexec_fn=child_mask)
    except FileNotFoundError:
        raise CannotRun(f"{cmd[0]}: command not found", 127) from None
    except OSError as e:
        raise CannotRun(f"cannot run {cmd[0]}: {e.strerror}", 126) from None
    while True:
        info = signal.sigtimedwait(waited, 0.5)
        rc = proc.poll()
        if rc is not None:
            break
        if info is None or info.si_signo == signal.SIGCHLD:
            continue
        if info.si_code > 0:  # SI_KERNEL and friends: not from kill(2)
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, info.si_signo)
    return 128 - rc if rc < 0 else rc


# --- helpers -----------------------------------------------------------------------------------


def _own_command() -> str:
    try:
        import psutil

        return shlex.join(psutil.Process().cmdline())
    except Exception:  # a process whose /proc entry cannot be read: fall back to argv
        return shlex.join([sys.executable, *sys.argv])


def _ancestors() -> List[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process().parents()]
    except psutil.Error:
        return [os.getppid()]


def _warn_if_cuda_initialized() -> None:
    torch = sys.modules.get("torch")
    if torch is None:
        return
    try:
        initialized = bool(torch.cuda.is_initialized())
    except Exception:  # a torch without CUDA support, or a stub
        return
    if initialized:
        warnings.warn(
            "CUDA was initialized before the GPU claim: CUDA_VISIBLE_DEVICES cannot take effect "
            "in this process any more — enter claim() before the first torch.cuda call",
            RuntimeWarning,
            stacklevel=4,
        )
