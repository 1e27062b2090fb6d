"""A real two-node Ray cluster on this machine (a head and a second node, loopback only): the
second node dies in the middle of a job, and no row is lost."""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from shared import CONTENT, MODELS, STYLE

pytestmark = pytest.mark.integration
RAY = Path(sys.executable).parent / "ray"
ROOT = Path(__file__).resolve().parents[1]
ROWS = 40


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(*args: str) -> subprocess.Popen:
    """`ray start --block ...` in a session of its own, so that killing its process group takes
    the node's raylet and workers with it, and nothing else."""
    return subprocess.Popen([str(RAY), "start", "--block", "--disable-usage-stats", "--node-ip-address", "127.0.0.1",
                             *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=os.environ.copy())


def stop(node: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 30)):
        if node.poll() is not None:
            break
        try:
            os.killpg(node.pid, sig)
        except ProcessLookupError:
            break
        try:
            node.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(node.pid, signal.SIGKILL)  # what the node started, should any of it be left
    except ProcessLookupError:
        pass


@pytest.fixture
def two_nodes(monkeypatch):
    """(address, second node's process): each node with 1 CPU, so the job's two actors land one
    on each. Token authentication with a token of its own, in a private file, as in production;
    the nodes and this process (the job's driver) all read it from the environment."""
    home = Path(tempfile.mkdtemp(prefix="rayn-", dir="/tmp"))  # short: Ray's socket paths are limited
    token = home / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    port = free_port()
    head = start_node("--head", "--num-cpus", "1", "--port", str(port), "--temp-dir", str(home / "ray"),
                      "--include-dashboard", "false", "--ray-client-server-port", str(free_port()))
    nodes = [head]
    try:
        address = f"127.0.0.1:{port}"
        wait_for(lambda: subprocess.run([str(RAY), "status", "--address", address], capture_output=True).returncode
                 == 0, "the head")
        second = start_node("--address", address, "--num-cpus", "1")
        nodes.append(second)
        wait_for(lambda: active_nodes(address) == 2, "the second node")
        yield address, second
    finally:
        for node in reversed(nodes):
            stop(node)
        shutil.rmtree(home, ignore_errors=True)


def active_nodes(address: str) -> int:
    status = subprocess.run([str(RAY), "status", "--address", address], capture_output=True, text=True).stdout
    active = status.split("Active:", 1)[-1].split("Pending:", 1)[0]
    return sum(line.strip().startswith("1 node_") for line in active.splitlines())


def wait_for(ready, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not come up in {timeout} s")
        time.sleep(0.2)


def ran_on(results: Path, node: subprocess.Popen) -> bool:
    """Whether the results record a row done by an actor among `node`'s processes."""
    if not results.is_dir() or not any(results.iterdir()):
        return False
    pids = {int(r["actor"].rsplit(":", 1)[1]) for r in pq.read_table(str(results), columns=["actor"]).to_pylist()
            if r["actor"]}  # "<name>@<host>:<pid>"
    return any(descends_from(pid, node.pid) for pid in pids)


def descends_from(pid: int, ancestor: int) -> bool:
    """Whether process `pid` is `ancestor` or below it (a node's workers are its raylet's children)."""
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])  # the parent's pid
        except (OSError, ValueError, IndexError):
            return False
    return False


def test_a_lost_node_costs_no_rows(two_nodes, tmp_path):
    """The driver runs as `ray job submit` runs it: a process with RAY_ADDRESS set. The second node
    (its raylet and every worker on it) is killed once the results show a row done by an actor on
    it, so that actor is in the middle of its next rows."""
    address, second = two_nodes
    photo = Image.open(CONTENT / "bridge_512.jpg").resize((640, 480))
    rows = []
    for i in range(ROWS):
        photo.rotate(i * 5).save(tmp_path / f"c{i}.jpg")
        rows.append(f"{tmp_path / f'c{i}.jpg'},{STYLE / 'style_a_570.jpg'}")
    (tmp_path / "m.csv").write_text("content,style\n" + "\n".join(rows) + "\n")
    out, results = tmp_path / "out", tmp_path / "results"
    driver = subprocess.Popen(
        [sys.executable, "-m", "jobs.stylize", "--manifest", str(tmp_path / "m.csv"), "--output-prefix", str(out),
         "--results", str(results), "--models", str(MODELS), "--actors", "2", "--style-size", "256",
         "--flush-seconds", "0.2"],
        cwd=ROOT, env={**os.environ, "RAY_ADDRESS": address}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        wait_for(lambda: ran_on(results, second) or driver.poll() is not None, "a row on the second node",
                 timeout=300)
        assert driver.poll() is None, "the job ended before the node could be killed"
        os.killpg(second.pid, signal.SIGKILL)  # the second node's raylet and workers, by process group
        said, err = driver.communicate(timeout=600)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, err[-3000:]
    records = pq.read_table(str(results)).to_pylist()
    assert sorted(r["row"] for r in records) == list(range(ROWS))  # each row once
    assert all(r["status"] == "ok" for r in records), [r["error"] for r in records if r["error"]]
    assert f"{ROWS} ok" in said and "0 failed" in said
    assert "replaced" in said and ", 0 replaced" not in said  # the lost actor was replaced
    assert "its node is gone" in err, err[-3000:]
    assert all(r["attempts"] == 1 for r in records)  # a lost node charges its rows nothing
