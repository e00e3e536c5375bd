"""A real one-node SLURM cluster for the tests marked `slurm`: munged, mariadbd, slurmdbd,
slurmctld and slurmd from Debian's packages (installed by .ci/run), started as plain
background daemons (no systemd) in a temporary folder, and stopped again by pid file.

    python tests/slurm_cluster.py start DIR   # prints the SLURM_CONF to export
    python tests/slurm_cluster.py stop DIR
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BINARIES = (
    "munged",
    "mungekey",
    "mariadbd",
    "mariadb-install-db",
    "mariadb",
    "slurmdbd",
    "slurmctld",
    "slurmd",
    "sbatch",
    "sacctmgr",
    "scontrol",
)
PORTS = {"ctld": 16817, "slurmd": 16818, "dbd": 16819, "mysql": 13306}


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]


def _which(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin") / name)


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def _wait(check, what: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise RuntimeError(f"timed out waiting for {what}")


def _alive(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text().strip()), 0)
        return True
    except (OSError, ValueError):
        return False


def write_configs(d: Path) -> Path:
    host = socket.gethostname()
    cpus = os.cpu_count() or 1
    mem = int(_memory_mb() * 0.8)
    munge = d / "munge" / "munge.socket"
    conf = d / "slurm.conf"
    conf.write_text(f"""ClusterName=babydistill
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge}
CredType=cred/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
SlurmctldPort={PORTS['ctld']}
SlurmdPort={PORTS['slurmd']}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
JobRequeue=1
KillWait=30
DefMemPerCPU={mem // cpus}
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort={PORTS['dbd']}
AccountingStoragePass={munge}
JobAcctGatherType=jobacct_gather/none
NodeName={host} CPUs={cpus} RealMemory={mem} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    dbd = d / "slurmdbd.conf"  # slurmdbd reads it beside SLURM_CONF
    dbd.write_text(f"""AuthType=auth/munge
AuthInfo=socket={munge}
DbdHost=localhost
DbdPort={PORTS['dbd']}
SlurmUser=root
PidFile={d}/slurmdbd.pid
LogFile={d}/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={PORTS['mysql']}
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=babydistill
""")
    dbd.chmod(0o600)
    return conf


def start(d: Path) -> dict[str, str]:
    """Start every daemon; returns the environment a client needs (SLURM_CONF). On failure the
    daemons already started are stopped again."""
    try:
        return _start(d.resolve())
    except BaseException:
        stop(d)
        raise


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _start(d: Path) -> dict[str, str]:
    taken = [f"{name} {port}" for name, port in PORTS.items() if _port_taken(port)]
    if taken:
        raise RuntimeError(f"ports in use ({', '.join(taken)}): another cluster is running; stop it with "
                           f"python tests/slurm_cluster.py stop <its folder>")
    for sub in ("munge", "state", "spool", "db"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    conf = write_configs(d)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    key = d / "munge" / "munge.key"
    if not key.exists():
        subprocess.run([_which("mungekey"), "--create", f"--keyfile={key}"], check=True)
        key.chmod(0o400)
    subprocess.run(
        [
            _which("munged"),
            f"--key-file={key}",
            f"--socket={d}/munge/munge.socket",
            f"--pid-file={d}/munge/munged.pid",
            f"--log-file={d}/munge/munged.log",
            f"--seed-file={d}/munge/munged.seed",
            "--force",
        ],
        check=True,
    )
    data = d / "db" / "data"
    if not data.exists():
        subprocess.run(
            [
                _which("mariadb-install-db"),
                "--user=root",
                f"--datadir={data}",
                "--auth-root-authentication-method=normal",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    sock = d / "db" / "mysql.sock"
    subprocess.Popen(
        [
            _which("mariadbd"),
            "--user=root",
            f"--datadir={data}",
            f"--socket={sock}",
            "--bind-address=127.0.0.1",
            f"--port={PORTS['mysql']}",
            f"--pid-file={d}/db/mariadb.pid",
            f"--log-error={d}/db/mariadb.log",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    sql = [_which("mariadb"), f"--socket={sock}", "-uroot"]
    _wait(lambda: subprocess.run([*sql, "-e", "select 1"], capture_output=True).returncode == 0, "mariadbd")
    subprocess.run(
        [
            *sql,
            "-e",
            "create database if not exists slurm_acct_db; "
            "create user if not exists 'slurm'@'localhost' identified by 'babydistill'; "
            "create user if not exists 'slurm'@'127.0.0.1' identified by 'babydistill'; "
            "grant all on slurm_acct_db.* to 'slurm'@'localhost'; grant all on slurm_acct_db.* to 'slurm'@'127.0.0.1';",
        ],
        check=True,
    )
    subprocess.run([_which("slurmdbd")], env=env, check=True)
    _wait(lambda: (d / "slurmdbd.pid").exists() and _alive(d / "slurmdbd.pid"), "slurmdbd")
    _wait(
        lambda: (
            subprocess.run(
                [_which("sacctmgr"), "-i", "add", "cluster", "babydistill"], env=env, capture_output=True
            ).returncode
            == 0
            or "babydistill"
            in subprocess.run(
                [_which("sacctmgr"), "-n", "list", "cluster"], env=env, capture_output=True, text=True
            ).stdout
        ),
        "slurmdbd to accept the cluster",
    )
    subprocess.run([_which("slurmctld"), "-f", str(conf)], env=env, check=True)
    subprocess.run([_which("slurmd"), "-f", str(conf)], env=env, check=True)

    def idle() -> bool:
        out = subprocess.run([_which("sinfo"), "-h", "-o", "%t"], env=env, capture_output=True, text=True).stdout
        return out.strip().startswith("idle") or out.strip().startswith("mix")
    _wait(idle, "the node to be idle", timeout=90)
    return {"SLURM_CONF": str(conf)}


def stop(d: Path) -> None:
    """Stop the daemons (by pid file) in the reverse order; the folder is left for inspection."""
    d = d.resolve()
    for pid_file in (
        d / "slurmd.pid",
        d / "slurmctld.pid",
        d / "slurmdbd.pid",
        d / "db" / "mariadb.pid",
        d / "munge" / "munged.pid",
    ):
        if pid_file.exists() and _alive(pid_file):
            pid = int(pid_file.read_text().strip())
            os.kill(pid, signal.SIGTERM)
            deadline = time.time() + 30
            while time.time() < deadline and _alive(pid_file):
                time.sleep(0.2)
            if _alive(pid_file):
                os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop"):
        sys.exit(__doc__)
    folder = Path(sys.argv[2])
    if sys.argv[1] == "start":
        print(f"export SLURM_CONF={start(folder)['SLURM_CONF']}")
    else:
        stop(folder)
