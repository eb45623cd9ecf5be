"""`edgeds list | show | fit | doctor` and their one-line errors, in-process through the CLI funnel."""

from __future__ import annotations

import pytest

from edgeds.cli import main
from edgeds.catalog.registry import user_registry_path


def run(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    out = capsys.readouterr()
    return info.value.code or 0, out.out, out.err


def test_list_shows_registry_and_default(capsys):
    code, out, _ = run(["list"], capsys)
    assert code == 0
    assert "r1-distill-qwen-1.5b:Q4_K_M*" in out and "unsloth/DeepSeek-R1-Distill-Qwen-1.5B-GGUF" in out
    r1_row = next(line for line in out.splitlines() if line.startswith("r1:UD-IQ1_S"))
    assert r1_row.split()[3] == "3"  # files of the split GGUF
    code, out, _ = run(["list", "--local"], capsys)
    assert code == 0 and "r1-distill" not in out  # nothing downloaded in the isolated cache


def test_show_reads_gguf_metadata(smollm2_path, capsys):
    code, out, _ = run(["show", str(smollm2_path)], capsys)
    assert code == 0
    assert "architecture    llama" in out and "context length  8192" in out
    assert "parameters      0.135 B" in out
    assert "Q4_1" in out and "210 tensors" in out and "Q8_0" in out
    assert "chat template" in out


def test_show_unknown_model_suggests_ids(capsys):
    code, _, err = run(["show", "r1-distil-qwen-14"], capsys)
    assert code != 0
    assert err.startswith("edgeds: error:") and "did you mean r1-distill-qwen-14b" in err


def test_show_registry_model_not_downloaded_names_the_pull(capsys):
    code, _, err = run(["show", "r1-distill-qwen-7b:Q8_0"], capsys)
    assert code != 0 and "edgeds pull r1-distill-qwen-7b:Q8_0" in err and len(err.strip().splitlines()) == 1


def test_fit_before_download_and_for_a_file(smollm2_path, capsys):
    code, out, _ = run(["fit", "r1-distill-qwen-1.5b", "--ctx", "8192", "--ram", "8", "--vram", "0"], capsys)
    assert code == 0 and "KV cache" in out and "fits: cpu" in out
    code, out, _ = run(["fit", "r1", "--ram", "16", "--vram", "0"], capsys)
    assert code == 1 and "does not fit" in out
    code, out, _ = run(["fit", str(smollm2_path), "--ctx", "4096", "--ram", "4", "--vram", "0"], capsys)
    assert code == 0 and "KV cache  0.1 GiB" in out  # 90 MiB, as llama.cpp allocates


def test_doctor_reports_machine_and_registry_table(capsys):
    code, out, _ = run(["doctor", "--ram", "32", "--vram", "8"], capsys)
    assert code == 0
    assert "CPU" in out and "physical cores" in out and "RAM" in out and "device" in out
    rows = {line.split()[0]: line.split()[3] for line in out.splitlines()
            if line.startswith(("r1", "v2", "v3", "coder"))}
    assert rows["r1-distill-qwen-1.5b:Q4_K_M"] == "gpu"
    assert rows["v2-lite-chat:Q4_K_M"] == "gpu+experts"
    assert rows["r1:UD-IQ1_S"] == "no"


def test_malformed_user_registry_is_one_line(capsys):
    path = user_registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('[models."x"\nname = 1\n')
    try:
        code, _, err = run(["list"], capsys)
    finally:
        path.unlink()
    assert code == 1 and err.startswith(f"edgeds: error: {path}:1:") and len(err.strip().splitlines()) == 1
