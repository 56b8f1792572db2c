"""Many machines, one study: two `digitlab sweep` workers share a study on a real PostgreSQL
server, started here as a throw-away cluster on 127.0.0.1 (the Debian postgresql package's
binaries; .ci/run installs them)."""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from digitlab.sweep import open_storage
from test_sweep import TINY_ARGS, TINY_SPACE

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    bin_dir = _bin_dir()
    if bin_dir is None:
        if os.environ.get("DIGITLAB_REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL server binaries (initdb) are missing; .ci/run installs the "
                        "postgresql package")
        pytest.skip("PostgreSQL server binaries (initdb) are not installed")
    # initdb refuses to run as root: run the server as the postgres user then.
    as_user: list[str] = []
    data = Path(tempfile.mkdtemp(prefix="digitlab-pg-"))
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "postgres"], check=True)
            user = pwd.getpwnam("postgres")
        os.chown(data, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    log = data / "server.log"

    def run(*cmd: str) -> None:
        done = subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{cmd[0]} failed:\n{done.stdout}\n{done.stderr}"

    run(str(bin_dir / "initdb"), "-D", str(data / "db"), "-U", "postgres", "--auth=trust",
        "--no-sync", "-E", "UTF8")
    run(str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-l", str(log), "-w", "-t", "60",
        "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {data} -c fsync=off", "start")
    try:
        run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
            "digitlab_test")
        yield f"postgresql://postgres@127.0.0.1:{port}/digitlab_test"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-m",
                        "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(data, ignore_errors=True)


def test_two_workers_share_one_study(postgres_url: str, tmp_path: Path,
                                     mnist_root: Path) -> None:
    space = tmp_path / "tiny.toml"
    space.write_text(TINY_SPACE)
    workers = []
    for number in (1, 2):
        args = ["--space", str(space), "--study", "shared", "--storage", postgres_url,
                "--trials", "6", "--final", "none", "--dir", str(tmp_path / f"machine{number}"),
                "--root", str(mnist_root), *TINY_ARGS]
        # One thread each: two workers with two OpenMP threads apiece on two cores spend
        # their time spinning on each other's cores.
        workers.append(subprocess.Popen([sys.executable, "-m", "digitlab", "sweep", *args],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}))
    outputs = [w.communicate(timeout=300) for w in workers]
    for worker, (out, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, out + err
        assert "postgresql://postgres@127.0.0.1" in out

    study = optuna.load_study(study_name="shared", storage=open_storage(postgres_url))
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) >= 6
    by_worker = Counter(t.user_attrs["worker"] for t in study.trials)
    assert len(by_worker) == 2, by_worker  # both workers ran trials of the one study
    ran = [int(re.search(r"\((\d+) run by this process\)", out).group(1))
           for out, _ in outputs]
    assert all(n >= 1 for n in ran)
    assert sum(ran) == len(study.trials) == sum(by_worker.values())
    # Each worker's trial numbers come from the shared study, so no two collide.
    assert len({t.number for t in study.trials}) == len(study.trials)
