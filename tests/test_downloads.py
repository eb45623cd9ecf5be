"""Trap 1 of the first day: `edgeds run r1 hi` in a terminal offered "Download 140.20 GB from
unsloth/DeepSeek-R1-GGUF? [Y/n]" although `doctor` said r1 does not fit and the disk had 54 GB
free, and `edgeds pull r1` started with no question at all.

Now a download goes through the fit estimate and the free disk first, is refused with the
numbers (`pull --force` overrides), asks with No as the default over 10 GB, and `pull` says what
it fetches and how big before it starts. The machine is pretended (RAM, free disk) so that the
verdicts do not depend on the test machine; nothing is downloaded except from the local fake hub.
"""

from __future__ import annotations

import io

import pytest

from edgeds.catalog.registry import load_registry
from edgeds.catalog.resolve import size_text
from edgeds.cli import main
from edgeds.errors import HubError
from edgeds.machine.hardware import Hardware
from tests.test_hub import DATA, REPO, SINGLE, edgeds, hub  # noqa: F401 - `hub` is a fixture

GiB = 1 << 30


class Terminal(io.StringIO):
    """A stdin/stderr that is a terminal; stdin holds the user's answers."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def machine(monkeypatch):
    """Pretend this machine's free RAM (GiB) and free disk (GB); no VRAM."""

    def pretend(*, ram_gib: float, disk_gb: float) -> None:
        from edgeds.machine import downloads

        ram = int(ram_gib * GiB)
        hw = Hardware(cpu="test", physical_cores=2, logical_cores=2, ram_total=ram, ram_available=ram,
                      gpu_offload=False, devices=(), gpu_hints=())
        monkeypatch.setattr(downloads, "detect", lambda: hw)
        monkeypatch.setattr(downloads, "free_disk", lambda path: int(disk_gb * 1e9))

    return pretend


@pytest.fixture
def pulls(monkeypatch) -> list[str]:
    """Records the downloads that would start (and stops them there)."""
    from edgeds.catalog import hub as hub_module

    started = []

    def pull(source, *, progress=True, label=None):
        started.append(label)
        raise HubError(f"{label}: stopped by the test where the download would start")

    monkeypatch.setattr(hub_module, "pull", pull)
    return started


def at_terminal(monkeypatch, answer: str) -> Terminal:
    """stdin and stderr are a terminal; the user types `answer`. Returns the stderr."""
    stderr = Terminal()
    monkeypatch.setattr("sys.stdin", Terminal(answer + "\n"))
    monkeypatch.setattr("sys.stderr", stderr)
    return stderr


def cli(args: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(args)
    return info.value.code or 0


def r1_size() -> str:
    _, source = load_registry().find("r1")
    return size_text(source.size)


def test_run_r1_on_a_small_machine_is_refused_with_the_numbers_and_asks_nothing(machine, pulls, monkeypatch):
    machine(ram_gib=32, disk_gb=54)
    stderr = at_terminal(monkeypatch, "y")  # a "y" that must not be read
    assert cli(["run", "r1", "hi"]) == 1
    lines = stderr.getvalue().strip().splitlines()
    assert len(lines) == 1 and "[Y/n]" not in lines[0] and "[y/N]" not in lines[0]
    line = lines[0]
    assert line.startswith(f"edgeds: error: r1:UD-IQ1_S ({r1_size()}) is not downloaded: it needs ")
    assert "32.0 GiB RAM + 0.0 GiB VRAM free" in line
    assert f"{r1_size()} to download but 54.00 GB free on the disk of" in line
    assert "`edgeds pull r1:UD-IQ1_S --force`" in line
    assert pulls == []


def test_a_download_over_10_gb_asks_with_no_as_the_default(machine, pulls, monkeypatch):
    machine(ram_gib=64, disk_gb=500)
    stderr = at_terminal(monkeypatch, "")  # the user presses Enter
    assert cli(["run", "r1-distill-qwen-32b", "hi"]) == 1
    shown = stderr.getvalue()
    assert ("r1-distill-qwen-32b:Q4_K_M is not downloaded. Download 19.90 GB from "
            "unsloth/DeepSeek-R1-Distill-Qwen-32B-GGUF? [y/N]") in shown
    assert "run `edgeds pull r1-distill-qwen-32b:Q4_K_M`" in shown
    assert pulls == []
    at_terminal(monkeypatch, "y")
    assert cli(["run", "r1-distill-qwen-32b", "hi"]) == 1
    assert pulls == ["r1-distill-qwen-32b:Q4_K_M"]


def test_a_small_download_still_asks_with_yes_as_the_default(machine, pulls, monkeypatch):
    machine(ram_gib=16, disk_gb=500)
    stderr = at_terminal(monkeypatch, "")
    cli(["run", "r1-distill-qwen-1.5b", "hi"])
    assert "Download 1.12 GB from unsloth/DeepSeek-R1-Distill-Qwen-1.5B-GGUF? [Y/n]" in stderr.getvalue()
    assert pulls == ["r1-distill-qwen-1.5b:Q4_K_M"]


def test_end_of_input_at_the_question_is_no(machine, pulls, monkeypatch):
    machine(ram_gib=16, disk_gb=500)
    stderr = Terminal()
    monkeypatch.setattr("sys.stdin", Terminal(""))  # Ctrl-D
    monkeypatch.setattr("sys.stderr", stderr)
    assert cli(["run", "r1-distill-qwen-1.5b", "hi"]) == 1
    assert "[Y/n]" in stderr.getvalue() and pulls == []


def test_pull_says_what_and_how_big_then_refuses_what_cannot_run(machine, pulls, capsys):
    machine(ram_gib=32, disk_gb=1000)
    assert cli(["pull", "r1"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"edgeds: r1:UD-IQ1_S: 3 file(s), {r1_size()} from unsloth/DeepSeek-R1-GGUF into ")
    assert err[1].startswith("edgeds: error: r1:UD-IQ1_S") and "32.0 GiB RAM" in err[1] and "--force" in err[1]
    # --force passes the fit check; without a terminal a download over 10 GB still needs --yes
    assert cli(["pull", "r1", "--force"]) == 1
    assert "over 10.00 GB" in capsys.readouterr().err and pulls == []
    assert cli(["pull", "r1", "--force", "--yes"]) == 1
    assert pulls == ["r1:UD-IQ1_S"]


def test_pull_refuses_more_than_the_free_disk(machine, pulls, capsys):
    machine(ram_gib=64, disk_gb=2)
    assert cli(["pull", "r1-distill-qwen-7b"]) == 1
    err = capsys.readouterr().err
    assert "4.68 GB to download but 2.00 GB free on the disk of" in err and "needs" not in err
    cli(["pull", "r1-distill-qwen-7b", "--force"])
    assert pulls == ["r1-distill-qwen-7b:Q4_K_M"]


def test_pull_from_the_hub_says_the_size_before_it_starts(hub, tmp_path):  # noqa: F811
    for name, data in DATA.items():
        hub.add(REPO, name, data)
    hf_home = tmp_path / "hf"
    out = edgeds(["pull", "tiny-test"], hf_home, hub.url)
    assert out.returncode == 0, out.stderr
    first = out.stderr.splitlines()[0]
    assert first == f"edgeds: tiny-test:Q8_0: 1 file(s), {size_text(len(DATA[SINGLE]))} from {REPO} into {hf_home / 'hub'}"
    again = edgeds(["pull", "tiny-test"], hf_home, hub.url)
    assert again.returncode == 0 and "from acme" not in again.stderr  # nothing left to fetch, nothing said
