"""Fitting Ray requests to nodes, the Ray flags, and files between nodes: no cluster needed."""

import pytest

from lens_digits.errors import ClusterError, LensDigitsError
from lens_digits.runs.executors import ray_options
from lens_digits.runs.ray_cluster import describe, fit_request, slots
from lens_digits.runs.remote import pack, unpack

GiB = 2.0**30
HEAD = {"CPU": 1.0, "memory": 4 * GiB, "node:127.0.0.1": 1.0, "object_store_memory": 1e8}
WORKER = {"CPU": 2.0, "GPU": 1.0, "memory": 8 * GiB, "worker": 1.0}


def test_a_request_some_node_offers_is_kept_and_the_others_are_named_with_the_largest_node():
    assert fit_request({"CPU": 2.0, "GPU": 1.0}, [HEAD, WORKER], fit_cpus=False) == {"CPU": 2.0, "GPU": 1.0}
    with pytest.raises(ClusterError) as e:
        fit_request({"CPU": 4.0, "GPU": 0.0}, [HEAD, WORKER], fit_cpus=False)
    message = str(e.value)
    assert "asks Ray for CPU 4, GPU 0, which no node of the cluster offers" in message
    assert "(largest node: CPU 2, GPU 1, memory 8.0 GiB, worker 1)" in message and "--threads N" in message
    with pytest.raises(ClusterError, match="no live node"):
        fit_request({"CPU": 1.0}, [], fit_cpus=True)


def test_threads_left_open_are_lowered_to_the_largest_node_that_has_the_rest():
    assert fit_request({"CPU": 8.0, "GPU": 0.0}, [HEAD, WORKER], fit_cpus=True) == {"CPU": 2.0, "GPU": 0.0}
    assert fit_request({"CPU": 8.0, "GPU": 0.0, "worker": 1.0}, [HEAD, WORKER], fit_cpus=True)["CPU"] == 2.0
    assert fit_request({"CPU": 8.0, "GPU": 0.0, "other": 1.0}, [HEAD, {**HEAD, "CPU": 3.0, "other": 1.0}], fit_cpus=True)["CPU"] == 3.0
    with pytest.raises(ClusterError, match="GPU 2"):  # fitting threads does not make a GPU appear
        fit_request({"CPU": 8.0, "GPU": 2.0}, [HEAD, WORKER], fit_cpus=True)


def test_slots_count_what_the_nodes_run_at_once():
    assert slots({"CPU": 1.0, "GPU": 0.0}, [HEAD, WORKER]) == 3
    assert slots({"CPU": 1.0, "GPU": 1.0}, [WORKER]) == 1
    assert slots({"CPU": 4.0}, [HEAD]) == 1  # never fewer than one
    assert describe({"CPU": 1.0, "node:x": 1.0, "object_store_memory": 5.0}) == "CPU 1, GPU 0"


def test_the_ray_flags_are_checked_and_parsed():
    assert ray_options("ray", None, 2, 0.5, ["worker=1", "big = 2"]) == {
        "threads": 2,
        "gpus": 0.5,
        "resources": {"worker": 1.0, "big": 2.0},
    }
    for args, message in (
        (("local", None, None, 1.0, []), "--gpus is for --executor ray"),
        (("local", None, None, None, ["worker=1"]), "--resource is for --executor ray"),
        (("local", "127.0.0.1:1", None, None, []), "--address is for --executor ray"),
        (("ray", None, 0, None, []), "--threads must be 1 or more"),
        (("ray", None, None, -1.0, []), "--gpus must be 0 or more"),
        (("ray", None, None, None, ["worker"]), "write NAME=N with N a positive number"),
        (("ray", None, None, None, ["=1"]), "write NAME=N"),
        (("ray", None, None, None, ["worker=0"]), "write NAME=N"),
    ):
        with pytest.raises(LensDigitsError, match=message):
            ray_options(*args)


def test_files_travel_with_their_checksums_and_damage_is_refused(tmp_path):
    src = tmp_path / "src"
    (src / "cache").mkdir(parents=True)
    (src / "grid.csv").write_text("a,b\n1,2\n")
    (src / "cache" / "shard.safetensors").write_bytes(b"\x00\x01")
    packed = pack(src)
    assert sorted(packed["files"]) == ["cache/shard.safetensors", "grid.csv"]
    unpack(packed, tmp_path / "dst")
    assert (tmp_path / "dst" / "cache" / "shard.safetensors").read_bytes() == b"\x00\x01"
    damaged = {"files": {**packed["files"], "grid.csv": b"a,b\n1,3\n"}, "sha256": packed["sha256"]}
    with pytest.raises(ClusterError, match="grid.csv came back from a Ray worker damaged"):
        unpack(damaged, tmp_path / "other")
    (src / "link").symlink_to(src / "grid.csv")
    with pytest.raises(ClusterError, match="is a symbolic link"):
        pack(src)


def test_a_task_folder_left_by_a_killed_worker_is_removed_by_the_next_task(tmp_path, monkeypatch):
    import subprocess
    import sys

    from lens_digits.runs.remote import scratch_folder

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    left = tmp_path / f"lens-digits-unit-{dead}-abc123"
    (left / "x").mkdir(parents=True)
    mine = scratch_folder("unit")
    live = scratch_folder("unit")  # this process is alive: its folders stay
    assert not left.exists() and mine.is_dir() and live.is_dir()
    assert mine.name.startswith(f"lens-digits-unit-{__import__('os').getpid()}-")
