"""A real one-node SLURM cluster on localhost for the tests: munged, slurmctld and slurmd started from a
generated configuration in a temporary directory, stopped (by the PIDs started here) when done.

Needs Debian's ``slurm-wlm`` and ``munge`` packages (``.ci/run`` installs them) and root (slurmd runs jobs
as their owner). ``SLURM_CONF`` points the client commands (sbatch, squeue, scontrol) at the cluster.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol")


def missing() -> str | None:
    """Why a cluster cannot be started here, or None."""
    absent = [d for d in DAEMONS if shutil.which(d) is None]
    if absent:
        return f"SLURM is not installed ({', '.join(absent)} missing): apt-get install slurm-wlm munge"
    if os.geteuid() != 0:
        return "a local SLURM cluster needs root (slurmd starts jobs as their owner)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024 - 512
    return 2048


@contextmanager
def cluster(root: Path, timeout: float = 60.0) -> Iterator[dict[str, str]]:
    """Start the cluster under ``root``; yields the environment its clients need."""
    root.mkdir(parents=True, exist_ok=True)
    for d in ("state", "spool", "log", "run"):
        (root / d).mkdir(exist_ok=True)
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    sock = root / "run" / "munge.socket"
    host = socket.gethostname()
    cpus = os.cpu_count() or 1
    conf = root / "slurm.conf"
    conf.write_text(
        "\n".join(
            [
                "ClusterName=textbooks-test",
                f"SlurmctldHost={host}",
                "SlurmUser=root",
                "SlurmdUser=root",
                f"SlurmctldPort={_free_port()}",
                f"SlurmdPort={_free_port()}",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                f"AuthInfo=socket={sock}",
                f"StateSaveLocation={root / 'state'}",
                f"SlurmdSpoolDir={root / 'spool'}",
                f"SlurmctldPidFile={root / 'run' / 'slurmctld.pid'}",
                f"SlurmdPidFile={root / 'run' / 'slurmd.pid'}",
                f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
                f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core_Memory",
                "SchedulerType=sched/backfill",
                "MpiDefault=none",
                "ReturnToService=2",
                "JobCompType=jobcomp/none",
                "AccountingStorageType=accounting_storage/none",
                "SlurmctldTimeout=30",
                "SlurmdTimeout=30",
                "MinJobAge=300",
                f"NodeName={host} CPUs={cpus} RealMemory={_memory_mb()} State=UNKNOWN",
                "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )
    )
    env = dict(os.environ, SLURM_CONF=str(conf))
    log = open(root / "log" / "daemons.log", "ab")  # noqa: SIM115 - open for the daemons' lifetime
    procs: list[subprocess.Popen] = []
    try:
        procs.append(
            subprocess.Popen(
                [
                    "munged",
                    "-F",
                    f"--socket={sock}",
                    f"--key-file={key}",
                    f"--pid-file={root / 'run' / 'munged.pid'}",
                    f"--log-file={root / 'log' / 'munged.log'}",
                    f"--seed-file={root / 'run' / 'munged.seed'}",
                    "--force",
                ],
                stdout=log,
                stderr=log,
                env=env,
            )
        )
        _wait(lambda: sock.exists(), timeout, "munged did not create its socket", root)
        procs.append(
            subprocess.Popen(["slurmctld", "-D", "-i", "-f", str(conf)], stdout=log, stderr=log, env=env)
        )
        procs.append(subprocess.Popen(["slurmd", "-D", "-f", str(conf)], stdout=log, stderr=log, env=env))

        def idle() -> bool:
            out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True)
            return out.returncode == 0 and out.stdout.strip() in ("idle", "mixed", "allocated")

        _wait(idle, timeout, "the SLURM node did not come up", root)
        yield {"SLURM_CONF": str(conf)}
    finally:
        if len(procs) == 3:
            _cancel_jobs(env, timeout=20.0)
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        log.close()


def _cancel_jobs(env: dict[str, str], timeout: float) -> None:
    """Cancel the jobs still on the cluster and wait until none is left: a job step (its ``slurmstepd`` and
    ``srun``) would outlive the stopped daemons. A launcher returns once rank 0 has its result, while the job's
    other ranks may still be ending."""
    jobs = subprocess.run(
        ["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True
    ).stdout.split()
    if jobs:
        subprocess.run(["scancel", "--full", *jobs], env=env, capture_output=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True)
        if left.returncode != 0 or not left.stdout.strip():
            return
        time.sleep(0.5)


def _wait(ready, timeout: float, what: str, root: Path) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            logs = "\n".join(
                f"--- {f.name}\n{f.read_text(errors='replace')[-1500:]}"
                for f in sorted((root / "log").glob("*.log"))
            )
            raise RuntimeError(f"{what} within {timeout:.0f} s\n{logs}")
        time.sleep(0.2)
