"""Thread counts: the chat app leaves a core to its UI only where no hyperthread is spare."""

from __future__ import annotations

import pytest

from edgeds.machine import hardware


@pytest.mark.parametrize("physical, logical, expected", [(8, 16, 8), (8, 8, 7), (2, 2, 1), (1, 1, 1)])
def test_threads_beside_ui(monkeypatch, physical, logical, expected):
    monkeypatch.setattr(hardware, "physical_cores", lambda: physical)
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: set(range(logical)), raising=False)
    assert hardware.threads_beside_ui() == expected


def test_physical_cores_counts_hyperthread_siblings_once(monkeypatch, tmp_path):
    topology = {0: "0,4", 1: "1,5", 2: "2,6", 3: "3,7", 4: "0,4", 5: "1,5", 6: "2,6", 7: "3,7"}
    real_path = hardware.Path

    def fake_path(p):
        p = str(p)
        for cpu, siblings in topology.items():
            if p == f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list":
                f = tmp_path / f"cpu{cpu}"
                f.write_text(siblings + "\n")
                return f
        return real_path(p)

    monkeypatch.setattr(hardware, "Path", fake_path)
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert hardware.physical_cores() == 4
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: {0, 4, 1}, raising=False)
    assert hardware.physical_cores() == 2  # only the cores this process may run on
