"""`edgeds bench` smoke run on SmolLM2 with tiny sizes (speed is reported, never asserted)."""

from __future__ import annotations

import re

import pytest

from edgeds.cli import main


def test_bench_prints_a_llama_bench_table_with_both_runners(smollm2_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["bench", str(smollm2_path), "-p", "16", "-n", "4", "-r", "1"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "runner" not in line and "---" not in line]
    tests = {(cells[5], cells[6]) for cells in ([c.strip() for c in r.strip("|").split("|")] for r in rows)}
    assert ("llama.cpp", "pp16") in tests and ("llama.cpp", "tg4") in tests
    assert any(runner == "edgeds" and t.startswith("pp") for runner, t in tests)
    for row in rows:
        m = re.search(r"([\d.]+) ± ([\d.]+) \|$", row)
        assert m and float(m.group(1)) > 0, row
    assert re.search(r"edgeds / llama\.cpp: decode [\d.]+x tok/s, prompt [\d.]+x tok/s, TTFT [\d.]+x", out)


def test_raw_loop_counts_what_it_ran(smollm2_path):
    from edgeds.measure.bench import RawLoop

    raw = RawLoop(smollm2_path, n_prompt=8, n_gen=2, threads=2)
    try:
        runs = [raw.run(), raw.run()]
    finally:
        raw.close()
    assert all(r.n_prompt == 8 and r.n_gen == 2 for r in runs)
    assert all(r.pp_tok_s > 0 and r.tg_tok_s > 0 and r.ttft_s > 0 for r in runs)
    assert raw.n_params > 100_000_000 and raw.size > 0
