"""A real two-node Ray cluster on this machine: work pinned to the second node comes back through Ray, byte for byte.

The head and a second node are separate ``ray start --block`` processes on the loopback address, each with one CPU,
its own temporary folder (Ray's session files and the node's ``TMPDIR``) and ports, no dashboard and no usage
statistics; only the second node has the custom resource ``worker``, so work asked to need it runs there. Ray swaps
127.0.0.1 for the machine's network address unless clusters across machines are switched off, and then refuses a
second node: the second node is started through Ray's own command line with that swap left out, so both nodes stay
on 127.0.0.1. Afterwards every process of the cluster is stopped and its folder removed, and the tests check it.
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import warnings
from pathlib import Path

import pytest

from lens_digits.cli import main
from lens_digits.errors import ClusterError
from lens_digits.testing import char_tokenizer, save_checkpoint

# The cluster's token, in this process (the driver) before Ray reads it: Ray's token mode is read once per process.
os.environ.update(RAY_AUTH_TOKEN=os.environ.get("RAY_AUTH_TOKEN") or secrets.token_hex(32), RAY_AUTH_MODE="token")
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
ray = pytest.importorskip("ray", reason="Ray is in the test extra: pip install -e '.[test]'")
psutil = pytest.importorskip("psutil", reason="psutil is in the test extra: pip install -e '.[test]'")

pytestmark = pytest.mark.slow

SECOND_NODE = (
    "import sys, ray._private.services as s; s.resolve_ip_for_localhost = lambda host: host; "
    "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()"
)
"""``ray start`` for the second node, keeping the loopback address it is given (see the module docs)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _processes(root: Path) -> list:
    """Every process of this cluster: those that name the cluster's folder on their command line, and their children
    (Ray's workers, whose command line Ray replaces by ``ray::TASK``)."""
    found = {}
    for p in psutil.process_iter(["cmdline"]):
        try:
            if str(root) in " ".join(p.info["cmdline"] or []):
                found[p.pid] = p
                found.update((c.pid, c) for c in p.children(recursive=True))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return list(found.values())


def _stop(root: Path) -> None:
    procs = _processes(root)
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=5)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, "HOME": str(root / "home"), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        self.started: list[subprocess.Popen] = []
        self.worker_node = ""
        self.errors: list[str] = []

    def start(self, name: str, head: bool) -> None:
        folder = self.root / name
        (folder / "tmp").mkdir(parents=True)
        ports = [
            f"--{flag}={_free_port()}"
            for flag in (
                "node-manager-port",
                "object-manager-port",
                "dashboard-agent-listen-port",
                "dashboard-agent-grpc-port",
                "runtime-env-agent-port",
                "metrics-export-port",
            )
        ]
        common = ["start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0", f"--temp-dir={folder}"]
        common += [f"--object-store-memory={100 * 2**20}", "--disable-usage-stats", *ports]
        env = {**self.env, "TMPDIR": str(folder / "tmp")}
        if head:
            cmd = [str(Path(sys.executable).parent / "ray"), *common, "--head", f"--port={self.port}", "--include-dashboard=false"]
            cmd.append(f"--dashboard-port={_free_port()}")
        else:
            cmd = [sys.executable, "-c", SECOND_NODE, *common, f"--address={self.address}", '--resources={"worker": 1}']
            env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "1"
        log = open(self.root / f"{name}.log", "w")  # noqa: SIM115 - kept open for the node's life
        self.started.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def wait_for_nodes(self, n: int) -> None:
        from lens_digits.runs.executors import _loopback_only

        _loopback_only()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                ray.init(address=self.address, _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError) as e:
                self.errors.append(f"{type(e).__name__}: {e}")
                time.sleep(1)
                continue
            try:
                while time.monotonic() < deadline:
                    nodes = [node for node in ray.nodes() if node["Alive"]]
                    if len(nodes) == n:
                        self.worker_node = next((x["NodeID"] for x in nodes if "worker" in x["Resources"]), "")
                        return
                    time.sleep(0.5)
            finally:
                ray.shutdown()
        logs = "\n".join((self.root / f).read_text()[-2000:] for f in os.listdir(self.root) if f.endswith(".log"))
        raise AssertionError(f"the cluster did not come up with {n} nodes ({self.errors[-1:]}):\n{logs}")


@pytest.fixture(scope="module")
def cluster():
    root = Path(tempfile.mkdtemp(prefix="ld-ray-"))  # short: Ray's socket paths inside it must fit in 107 bytes
    c = Cluster(root)
    try:
        c.start("head", head=True)
        c.wait_for_nodes(1)
        c.start("second", head=False)
        c.wait_for_nodes(2)
        assert c.worker_node
        yield c
    finally:
        _stop(root)
        left = _processes(root)
        shutil.rmtree(root, ignore_errors=True)
        assert not left, f"Ray processes left running: {[p.pid for p in left]}"
        assert not root.exists()


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("small") / "small", "llama", char_tokenizer(), n_layers=2, d_model=32)


def cli(*args: str) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return main(list(args))


def study_file(tmp_path: Path, small: Path) -> Path:
    path = tmp_path / "study.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            methods = ["logit_lens"]
            target = "first"
            n = 10
            scales = "1-2"

            [[models]]
            name = "arith-llama"
            model = "builtin:arith-llama"

            [[models]]
            name = "small"
            model = "{small}"

            [[tasks]]
            name = "add"
            """
        )
    )
    return path


def files(folder: Path) -> dict[str, bytes]:
    skip = ("run.json", "report.html", "heatmap.html", "study.json", "study.html")  # the pages show run.json's provenance
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in skip}


def test_a_study_on_the_second_node_survives_a_killed_worker_and_a_killed_driver_and_equals_a_local_study(
    cluster, small_dir, tmp_path, monkeypatch, capsys
):
    import lens_digits.runs.executors as executors
    import lens_digits.storage.reservation as reservation

    path = study_file(tmp_path, small_dir)
    assert cli("study", str(path), "--out", str(tmp_path / "local"), "--threads", "1", "--no-progress") == 0

    sent = []
    run_ray = executors.run_ray

    def recording(units, **kwargs):
        sent.append(units)
        return run_ray(units, **kwargs)

    monkeypatch.setattr(executors, "run_ray", recording)
    # The driver is "killed" (Ctrl-C) right after it wrote the first unit that came back.
    write = reservation.Reservation.write

    def write_then_interrupt(self, fill, carry=None):
        write(self, fill, carry)
        raise KeyboardInterrupt

    monkeypatch.setattr(reservation.Reservation, "write", write_then_interrupt)
    # And the first worker process that starts a unit is killed in the middle of it.
    killed = []
    stop = threading.Event()

    def kill_first_worker():
        while not stop.is_set() and not killed:
            for p in _processes(cluster.root / "second"):
                try:
                    if "unit_on_worker" in " ".join(p.cmdline()):
                        time.sleep(0.3)
                        p.send_signal(signal.SIGKILL)
                        killed.append(p.pid)
                        break
                except psutil.NoSuchProcess:
                    pass
            time.sleep(0.05)

    killer = threading.Thread(target=kill_first_worker, daemon=True)
    killer.start()
    out = tmp_path / "cluster"
    args = ("study", str(path), "--out", str(out), "--executor", "ray", "--address", cluster.address, "--resource", "worker=1")
    try:
        assert cli(*args, "--threads", "1", "--no-progress") == 128 + signal.SIGINT
    finally:
        stop.set()
        killer.join()
    assert killed, "no worker process was seen running a unit"
    assert "after writing 1 finished unit(s) into" in capsys.readouterr().err
    record = json.loads((out / "study.json").read_text())
    assert record["status"] == "interrupted" and len(record["units"]) == 1  # the unit written before the interrupt is kept

    monkeypatch.setattr(reservation.Reservation, "write", write)
    assert cli(*args, "--threads", "1", "--no-progress") == 0  # resumes: only the unit not written yet runs
    record = json.loads((out / "study.json").read_text())
    assert record["status"] == "done" and len(record["ran"]) == 1 and record["executor"] == "ray"
    assert set(record["nodes"].values()) == {cluster.worker_node}  # the second node ran the work
    assert files(out) == files(tmp_path / "local")  # every unit's grid, prompts and residual shards, and the study's tables

    # The units sent named no folder of the driver's: the workers wrote into their own temporary folders, now empty of units.
    text = json.dumps(sent, default=str)
    assert str(out) not in text and str(tmp_path) not in text.replace(str(small_dir), "")
    worker_tmp = cluster.root / "second" / "tmp"
    assert not list(worker_tmp.glob("lens-digits-unit-*"))
    shipped = list(worker_tmp.glob("lens-digits-models-*/*/small/config.json"))
    assert len(shipped) == 1  # the local checkpoint went to the second node once, through the object store
    assert not list((cluster.root / "head" / "tmp").glob("lens-digits-*"))  # and nothing ran on the head


def test_a_sharded_run_on_the_second_node_equals_a_local_run(cluster, tmp_path, monkeypatch):
    import lens_digits.runs.executors as executors

    sent = []
    run_ray = executors.run_ray

    def recording(units, **kwargs):
        sent.append(units)
        return run_ray(units, **kwargs)

    monkeypatch.setattr(executors, "run_ray", recording)
    run = ["run", "--model", "builtin:arith-llama", "--scales", "1-2", "--n", "10", "--methods", "logit_lens", "--seed", "2"]
    run += ["--shard-size", "8", "--threads", "1", "--no-progress"]
    assert cli(*run, "--out", str(tmp_path / "local")) == 0
    assert cli(*run, "--out", str(tmp_path / "ray"), "--executor", "ray", "--address", cluster.address, "--resource", "worker=1") == 0
    assert files(tmp_path / "ray") == files(tmp_path / "local")  # the grids and every residual shard, byte for byte
    cache = json.loads((tmp_path / "ray" / "run.json").read_text())["cache"]
    local = json.loads((tmp_path / "local" / "run.json").read_text())["cache"]
    assert cache["problems"] == {"read": local["problems"]["computed"], "computed": 0}
    assert cache["nodes"] == [cluster.worker_node]
    assert len(sent) == 1 and len(sent[0]) == 4  # 2 scales x 10 test problems, 8 a shard: one unit a shard
    assert str(tmp_path) not in json.dumps(sent, default=str)  # no folder of the driver's, the cache's included


def test_a_request_no_node_offers_is_named_at_once_and_threads_left_open_are_fitted(cluster, capsys):
    from lens_digits.runs.executors import run_ray

    units = [{"threads": 2, "model": {"gpus": 0}, "n": 1}]
    started = time.monotonic()
    for kwargs, asked in (
        ({"threads": 2}, "CPU 2, GPU 0"),
        ({"gpus": 1.0}, "CPU 2, GPU 1"),
        ({"resources": {"worker": 2.0}}, "CPU 2, GPU 0, worker 2"),
    ):
        with pytest.raises(ClusterError, match=rf"asks Ray for {asked}.*no node of the cluster offers \(largest node: CPU 1, GPU 0"):
            run_ray(units, address=cluster.address, work=json.dumps, **kwargs)
    assert time.monotonic() - started < 30
    # The units' two threads (this process's torch threads, say) are fitted to the one CPU the nodes have, and said so.
    assert run_ray(units, address=cluster.address, work=json.dumps, progress=True) == [json.dumps({**units[0], "threads": 1})]
    assert "CPU 1, GPU 0 (fitted to the largest node; --threads N to choose)" in capsys.readouterr().out


def test_a_node_that_leaves_the_cluster_is_reported_not_waited_on(cluster, monkeypatch):
    import lens_digits.runs.ray_cluster as ray_cluster
    from lens_digits.runs.executors import run_ray

    monkeypatch.setattr(ray_cluster, "NODE_TIMEOUT_S", 5.0)
    second = [p for p in _processes(cluster.root / "second") if "raylet" in " ".join(p.cmdline()[:1])]
    assert second

    def leave():
        time.sleep(3)
        for p in second:
            p.kill()

    threading.Thread(target=leave, daemon=True).start()
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    units = [{"threads": 1, "model": {"gpus": 0}, "n": i} for i in range(3)]
    started = time.monotonic()
    with pytest.raises(ClusterError, match="no live node of the Ray cluster can run a unit .* a node left the cluster"):
        run_ray(units, address=cluster.address, work=_slow, resources={"worker": 1.0})
    assert time.monotonic() - started < 90


def _slow(unit):
    time.sleep(60)
    return unit
