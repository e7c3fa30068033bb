"""A fleet of real agent daemons on the fake NVML, each serving /metrics on its own loopback
address (127.0.0.2, 127.0.0.3, … on one port), for the Prometheus tests and benchmarks.

Each agent is ``gpumon-agent run --metrics 127.0.0.N:PORT`` with its own fake libnvidia-ml
state, state dir and claims registry, under a folder every user may read (the SSH fleet's test
user reads the agents' snapshots: ``snapshot_behaviour``). Workloads — the processes the fake
NVML lists on a GPU — are real processes (``workload``), so the agent finds their users and
command lines as on a real server; trainers that claim GPUs through the real hook are
``trainer``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from agent_proc import Daemon, agent_env

from harness.fakenvml import FakeNvml, FakeState
from harness.sshd import free_port

TRAINER = """\
import sys, time
from gpumon_agent.hook import claim
from gpumon_agent.settings import AgentSettings

state_dir, gpus, job = sys.argv[1], [int(g) for g in sys.argv[2].split(",")], sys.argv[3]
with claim(gpus=gpus, job=job, settings=AgentSettings(state_dir=state_dir)) as c:
    c.update(epoch=3, epochs=30, loss=0.25)
    print("claimed", flush=True)
    time.sleep(3600)
"""
SLEEPER = "import time\ntime.sleep(3600)\n"


@dataclass
class SimAgent:
    name: str
    address: str
    port: int
    nvml: FakeNvml
    state_dir: Path
    dcgm_names: bool = False
    daemon: Daemon | None = None
    env: dict[str, str] = field(default_factory=dict)  # more GPUMON_* settings for its daemon

    @property
    def instance(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def snapshot(self) -> Path:
        return self.state_dir / "report.json"


@dataclass
class AgentFleet:
    first_address: int = 2
    agents: list[SimAgent] = field(default_factory=list)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gpumon-agents-")))
    port: int = 0
    _workloads: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        os.chmod(self.root, 0o755)  # the SSH fleet's test user reads the snapshots
        (self.root / "train.py").write_text(TRAINER)
        (self.root / "jupyter.py").write_text(SLEEPER)
        for path in (self.root / "train.py", self.root / "jupyter.py"):
            os.chmod(path, 0o644)

    def add(
        self, name: str, state: FakeState, dcgm_names: bool = False, address: str | None = None
    ) -> SimAgent:
        number = self.first_address + len(self.agents)
        address = address or f"127.0.0.{number}"
        folder = self.root / name
        agent = SimAgent(
            name=name,
            address=address,
            port=0,
            nvml=FakeNvml(folder / "nvml", state),
            state_dir=folder / "state",
            dcgm_names=dcgm_names,
        )
        self.agents.append(agent)
        return agent

    def agent(self, name: str) -> SimAgent:
        return next(a for a in self.agents if a.name == name)

    def start(self, interval: float = 0.5) -> None:
        if not self.port:
            self.port = free_port([a.address for a in self.agents])
        for agent in self.agents:
            agent.port = self.port
            env = agent_env(agent.nvml.env(log=False), agent.state_dir)
            if agent.dcgm_names:
                env["GPUMON_METRICS_DCGM_NAMES"] = "1"
            env.update(agent.env)
            args = ("--interval", str(interval), "--metrics", agent.instance)
            agent.daemon = Daemon(env, agent.state_dir, args)
        for agent in self.agents:
            assert agent.daemon is not None
            agent.daemon.metrics_port()
            agent.daemon.wait_snapshot()
            os.chmod(agent.snapshot, 0o644)

    def restart(self, interval: float) -> None:
        """Every daemon stopped and started again (a new first sample), same state dirs."""
        self.stop_daemons()
        self.start(interval)

    def stop_daemons(self) -> None:
        for agent in self.agents:
            if agent.daemon is not None:
                agent.daemon.stop()
                agent.daemon = None

    def workload(self, script: str = "jupyter.py", user: int | None = None) -> int:
        """A sleeping ``python3 SCRIPT`` (as ``user``, a uid, when given): its pid."""
        preexec = None
        if user is not None:

            def preexec() -> None:
                os.setgid(user_gid(user))
                os.setuid(user)

        proc = subprocess.Popen(
            ["python3", str(self.root / script)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=preexec,
            cwd=self.root,
        )
        self._workloads.append(proc)
        return proc.pid

    def trainer(self, agent: SimAgent, gpus: str, job: str) -> int:
        """A trainer holding a claim on ``gpus`` of ``agent`` through the real hook (progress
        epoch 3/30, loss 0.25) and sleeping: its pid, once the claim is made."""
        proc = subprocess.Popen(
            [sys.executable, str(self.root / "train.py"), str(agent.state_dir), gpus, job],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=agent_env(agent.nvml.env(log=False), agent.state_dir),
            cwd=self.root,
        )
        self._workloads.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != b"claimed":
            said = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"the trainer did not claim: {said}")
        return proc.pid

    def close(self) -> None:
        self.stop_daemons()
        for proc in self._workloads:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        shutil.rmtree(self.root, ignore_errors=True)


def user_gid(uid: int) -> int:
    import pwd

    return pwd.getpwuid(uid).pw_gid


def snapshot_behaviour(agent: SimAgent) -> str:
    """An SSH fleet behaviour (tests/harness/sshd.py) that answers with this agent's snapshot:
    the SSH side then sees exactly the Report the agent's /metrics is made from."""
    return f"exec cat {agent.snapshot}"
