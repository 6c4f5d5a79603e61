"""A real, throw-away Slurm cluster on this machine: munged, slurmctld and one slurmd per node.

Debian's Slurm (22.05) is built with multiple-slurmd support, so several compute nodes can live on one
host: each ``NodeName=node-X`` gets ``NodeAddr=127.0.0.1`` and a port of its own, and its own spool,
pid and log files (``%n`` in slurm.conf). Everything runs as root on loopback, without cgroups.

    cluster = LocalSlurmCluster(Path("/tmp/lab"))
    cluster.start()            # writes the config, starts every daemon, waits until all nodes are idle
    cluster.run("sinfo")       # any client command, with SLURM_CONF set
    cluster.stop()             # kills by pid, then every leftover slurmstepd (and its job) under the lab

The daemons run in the foreground (``-D``/``-F``) as children of this process, detached from its
stdin/stdout (CI pipes them), each in its own session, logging into ``<root>/log/``. `stop()` is safe to
call at any point of `start()` (and more than once); a failed `start()` stops what it started before
raising, with the daemons' log tails in the error.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from supervisor.act.local import descendants, process_children

SLURM_BINARIES = (
    "slurmctld",
    "slurmd",
    "sbatch",
    "squeue",
    "sinfo",
    "scontrol",
    "scancel",
    "munged",
    "mungekey",
)
OWNER_FILE = "owner.pid"  # the pid of the process that started the cluster (see reap_stale_labs)


class ClusterError(RuntimeError):
    """The cluster could not be started (or a client command failed); the message has the log tails."""


def find_binary(name: str) -> str | None:
    """`name` on PATH, or in /usr/sbin (often not on a non-login root PATH)."""
    found = shutil.which(name)
    if found:
        return found
    for d in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        candidate = Path(d) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def missing_binaries() -> list[str]:
    """Which Slurm / munge programs are not installed (`scripts/install-system-deps.sh` installs them)."""
    return [b for b in SLURM_BINARIES if find_binary(b) is None]


def short_hostname() -> str:
    """What slurmctld compares `SlurmctldHost` with (`hostname -s`)."""
    return socket.gethostname().split(".")[0]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class ClusterSpec:
    """The cluster's shape. `cred_expire_s` bounds how long a requeued job waits before it runs again
    (cred_expire + 1 s; Slurm's default of 120 s would make every requeue test slow)."""

    nodes: tuple[str, ...] = ("node-0", "node-1", "node-2", "node-3")
    cpus_per_node: int = 2
    partition: str = "debug"
    cred_expire_s: int = 10
    kill_wait_s: int = 5  # SIGTERM -> SIGKILL when a job ends, is cancelled or requeued
    cluster_name: str = "ftsuptest"


@dataclass
class _Daemon:
    name: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class LocalSlurmCluster:
    """One cluster under `root` (created if missing). See the module docstring."""

    root: Path
    spec: ClusterSpec = field(default_factory=ClusterSpec)
    _daemons: list[_Daemon] = field(default_factory=list)
    _ports: dict[str, int] = field(default_factory=dict)

    # ------------------------------------------------------------------ paths

    @property
    def slurm_conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "run" / "munge.socket"

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    @property
    def env(self) -> dict[str, str]:
        """What every client command (and a daemon using this cluster) needs in its environment."""
        return {"SLURM_CONF": str(self.slurm_conf)}

    def client_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env.update(self.env)
        # A client must talk to this cluster only, whatever the caller's environment says.
        for key in ("SLURM_JOB_ID", "SLURM_JOBID", "SLURM_CONFIG", "SQUEUE_FORMAT", "SINFO_FORMAT"):
            env.pop(key, None)
        return env

    # ------------------------------------------------------------------ config

    def write_config(self) -> Path:
        """Write munge's key directory and slurm.conf; returns the slurm.conf path."""
        for d in ("etc", "state", "spool", "log", "munge/etc", "munge/run", "munge/lib", "munge/log", "jobs"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge" / "etc", 0o700)  # the key's directory must be private
        os.chmod(self.root / "munge" / "run", 0o755)  # the socket's directory must be world-executable
        os.chmod(self.root, 0o755)
        if not self._ports:
            self._ports["ctld"] = free_port()
            for node in self.spec.nodes:
                self._ports[node] = free_port()
        host = short_hostname()
        s = self.spec
        nodes = "\n".join(
            f"NodeName={n} NodeHostname={host} NodeAddr=127.0.0.1 Port={self._ports[n]} "
            f"CPUs={s.cpus_per_node} RealMemory=1000 State=UNKNOWN"
            for n in s.nodes
        )
        r = self.root
        text = f"""# Written by tests/slurm/cluster.py: a throw-away cluster on loopback. Do not edit.
ClusterName={s.cluster_name}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={self._ports["ctld"]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket},cred_expire={s.cred_expire_s}
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/state/slurmctld.pid
SlurmdPidFile={r}/spool/slurmd-%n.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,bf_interval=1,sched_interval=5
JobRequeue=1
ReturnToService=1
KillWait={s.kill_wait_s}
MinJobAge=600
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
MessageTimeout=10
MailProg=/bin/true
{nodes}
PartitionName={s.partition} Nodes={",".join(s.nodes)} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""
        self.slurm_conf.write_text(text)
        return self.slurm_conf

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout_s: float = 30.0) -> None:
        """Start munged, slurmctld and every slurmd; return when every node is idle."""
        missing = missing_binaries()
        if missing:
            raise ClusterError(f"not installed: {', '.join(missing)} (run scripts/install-system-deps.sh)")
        try:
            self.write_config()
            (self.root / OWNER_FILE).write_text(f"{os.getpid()}\n")
            self._start_munge()
            self._spawn(
                "slurmctld",
                [_bin("slurmctld"), "-D", "-i", "-f", str(self.slurm_conf)],
            )
            self._wait(lambda: self._ping(), "slurmctld to answer", timeout_s)
            for node in self.spec.nodes:
                self._spawn(f"slurmd-{node}", [_bin("slurmd"), "-D", "-N", node, "-f", str(self.slurm_conf)])
            self.wait_idle(timeout_s)
        except BaseException as exc:
            tails = self.log_tails()
            self.stop()
            if isinstance(exc, ClusterError):
                raise ClusterError(f"{exc}\n{tails}") from exc
            raise

    def _start_munge(self) -> None:
        key = self.root / "munge" / "etc" / "munge.key"
        if not key.exists():
            subprocess.run(
                [_bin("mungekey"), "--create", "--keyfile", str(key)],
                check=True,
                capture_output=True,
                timeout=30,
            )
        os.chmod(key, 0o600)
        self._spawn(
            "munged",
            [
                _bin("munged"),
                "--foreground",
                "--force",  # root-owned lab directories under /tmp: skip the ownership pedantry
                "--socket", str(self.munge_socket),
                "--key-file", str(key),
                "--pid-file", str(self.root / "munge" / "run" / "munged.pid"),
                "--log-file", str(self.root / "munge" / "log" / "munged.log"),
                "--seed-file", str(self.root / "munge" / "lib" / "munged.seed"),
            ],
        )  # fmt: skip
        self._wait(self.munge_socket.exists, "munged's socket", 15.0)

    def _spawn(self, name: str, argv: Sequence[str]) -> None:
        log = self.log_dir / f"{name}.out"
        with open(log, "ab") as out:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.client_env(),
                cwd=str(self.root),
                start_new_session=True,
            )
        self._daemons.append(_Daemon(name, process, log))

    def _check_alive(self) -> None:
        for d in self._daemons:
            code = d.process.poll()
            if code is not None:
                raise ClusterError(f"{d.name} exited with status {code}")

    def _wait(self, ready: object, what: str, timeout_s: float) -> None:
        assert callable(ready)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            if ready():
                return
            time.sleep(0.1)
        raise ClusterError(f"timed out after {timeout_s:g}s waiting for {what}")

    def _ping(self) -> bool:
        result = self.run("scontrol", "ping", check=False, timeout=10)
        return result.returncode == 0 and "UP" in result.stdout

    def node_states(self) -> dict[str, str]:
        """node -> sinfo's compact state (`idle`, `alloc`, `drain`, `unk*`, ...)."""
        result = self.run("sinfo", "-h", "-N", "-o", "%N %T", check=False, timeout=10)
        states: dict[str, str] = {}
        if result.returncode != 0:
            return states
        for line in result.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2:
                states[parts[0]] = parts[1]
        return states

    def wait_idle(self, timeout_s: float = 30.0, nodes: Sequence[str] | None = None) -> None:
        """Until every node (or `nodes`) is idle: known, responding, not drained, not allocated."""
        want = tuple(nodes or self.spec.nodes)

        def ready() -> bool:
            states = self.node_states()
            return all(states.get(n) == "idle" for n in want)

        try:
            self._wait(ready, f"nodes {', '.join(want)} to be idle", timeout_s)
        except ClusterError as exc:
            raise ClusterError(f"{exc}; states now: {self.node_states()}") from exc

    def reset(self, timeout_s: float = 60.0) -> None:
        """Between tests: cancel every job, resume every node, wait until all are idle again."""
        self.run("scancel", "--full", "--user", "root", check=False)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            jobs = self.run("squeue", "-h", "-o", "%i %T", check=False).stdout.split("\n")
            if not [j for j in jobs if j.strip()]:
                break
            self.run("scancel", "--full", "--user", "root", check=False)
            time.sleep(0.5)
        for node, state in self.node_states().items():
            if state != "idle":
                self.run("scontrol", "update", f"NodeName={node}", "State=RESUME", check=False)
        self.wait_idle(max(5.0, deadline - time.monotonic()))

    def stop(self) -> None:
        """Stop everything this cluster started, even half-started, and every job process it left."""
        for d in reversed(self._daemons):  # slurmds first, munged last
            if d.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(d.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10.0
        for d in reversed(self._daemons):
            with contextlib.suppress(subprocess.TimeoutExpired):
                d.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(d.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                d.process.wait(timeout=5)
        self._daemons.clear()
        # Daemons a previous (crashed) run left, found by their pid files.
        for pid_file in (*self.root.glob("spool/slurmd-*.pid"), self.root / "state" / "slurmctld.pid",
                         self.root / "munge" / "run" / "munged.pid"):  # fmt: skip
            _kill_pid_file(pid_file, self.root)
        kill_leftover_steps(self.root)

    def log_tails(self, lines: int = 15) -> str:
        out = []
        for path in sorted(self.log_dir.glob("*")) + sorted((self.root / "munge" / "log").glob("*")):
            with contextlib.suppress(OSError):
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                if tail:
                    out.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(out)

    def __enter__(self) -> LocalSlurmCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ clients

    def run(
        self, *argv: str, check: bool = True, timeout: float = 30.0, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command (`sbatch`, `squeue`, ...) against this cluster."""
        binary = find_binary(argv[0]) or argv[0]
        result = subprocess.run(
            [binary, *argv[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.client_env(env),
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if check and result.returncode != 0:
            raise ClusterError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
        return result


def reap_stale_labs(parent: Path, prefix: str) -> list[Path]:
    """Stop and delete clusters under `parent/prefix*` whose owner process is gone (a test session that
    was SIGKILLed leaves its daemons running: they would hold ports and CPU forever). Returns them."""
    reaped = []
    for lab in parent.glob(f"{prefix}*"):
        try:
            owner = int((lab / OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            continue
        if Path(f"/proc/{owner}").exists():
            continue
        LocalSlurmCluster(lab).stop()
        shutil.rmtree(lab, ignore_errors=True)
        reaped.append(lab)
    return reaped


def _bin(name: str) -> str:
    found = find_binary(name)
    if found is None:
        raise ClusterError(f"{name} is not installed (run scripts/install-system-deps.sh)")
    return found


def _kill_pid_file(pid_file: Path, root: Path) -> None:
    """SIGKILL the process named in `pid_file` if it still runs with its files under `root`."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    if _touches(pid, root):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _touches(pid: int, root: Path) -> bool:
    """Whether the process's cwd, command line or an open file lies under `root` (a recycled pid
    of an unrelated process never does)."""
    prefix = str(root.resolve())
    try:
        if os.readlink(f"/proc/{pid}/cwd").startswith(prefix):
            return True
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if prefix.encode() in f.read():
                return True
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(prefix):
                    return True
    except OSError:
        return False
    return False


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def kill_leftover_steps(root: Path, also_under: Sequence[Path] = ()) -> list[int]:
    """SIGKILL every slurmstepd whose files lie under `root` (or `also_under`), with its whole process
    tree (job scripts, srun, node agents, torchrun, ranks). Returns the pids signalled."""
    roots = (root, *also_under)
    tree = process_children()
    victims: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if _comm(pid) != "slurmstepd" or not any(_touches(pid, r) for r in roots):
            continue
        victims |= {pid, *descendants(pid, tree)}
    for pid in victims:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return sorted(victims)
