"""`edgeds convert --quant`: checkpoint → F16 (temporary) → recipe quantization → expert-offload layout."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_convert_with_quant_recipe(moe_hf, tmp_path, capsys):
    from edgeds.catalog.gguf import expert_layer, read_gguf
    from edgeds.cli import main

    out = tmp_path / "tiny-moe-q3.gguf"
    try:
        main(["convert", str(moe_hf), "-o", str(out), "--quant", "moe-q3", "--no-progress"])
    except SystemExit as exc:
        assert not exc.code
    assert capsys.readouterr().out.strip() == str(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no F16 or partial file left
    info = read_gguf(out)
    assert info.layout.recipe == "moe-q3"
    types = {t.name: t.ggml_type for t in info.tensors}
    assert types["blk.1.ffn_gate_exps.weight"] == "Q3_K" and types["blk.1.ffn_down_exps.weight"] == "Q4_K"
    assert expert_layer(info.tensors[-1].name) == 2


def test_convert_refuses_imatrix_types_before_converting(tmp_path, capsys):
    from edgeds.cli import main

    with pytest.raises(SystemExit) as exc:  # converting would fail: the source folder does not exist
        main(["convert", str(tmp_path / "model"), "-o", str(tmp_path / "x.gguf"), "--quant", "IQ1_S", "--no-progress"])
    assert exc.value.code != 0
    assert "needs an importance matrix" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_convert_with_quant_and_split_experts(moe_hf, tmp_path, capsys):
    from edgeds.catalog.gguf import expert_layer, read_file
    from edgeds.cli import main

    out = tmp_path / "tiny-moe-q2.gguf"
    try:
        main(["convert", str(moe_hf), "-o", str(out), "--quant", "moe-q2", "--split-experts", "--no-progress"])
    except SystemExit as exc:
        assert not exc.code
    written = capsys.readouterr().out.split()
    assert [p.rsplit("/", 1)[-1] for p in written] == ["tiny-moe-q2-00001-of-00002.gguf", "tiny-moe-q2-00002-of-00002.gguf"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.rsplit("/", 1)[-1] for p in written)
    hot, experts = (read_file(p).tensors for p in written)
    assert all(expert_layer(t.name) is None for t in hot)
    assert experts and all(expert_layer(t.name) is not None for t in experts)


def test_split_experts_without_quant_is_a_usage_error(tmp_path, capsys):
    from edgeds.cli import main

    with pytest.raises(SystemExit) as exc:  # converting would fail: the source folder does not exist
        main(["convert", str(tmp_path / "model"), "-o", str(tmp_path / "x.gguf"), "--split-experts", "--no-progress"])
    assert exc.value.code == 2
    assert "--split-experts" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
