"""Quantization recipes, the expert-offload layout and expert overrides on a real tiny
DeepSeek-V3-shaped MoE (built with transformers, converted to F16 by edgeds' converter)."""

from __future__ import annotations

import re

import pytest

from edgeds.catalog.gguf import Layout, expert_layer, read_file, read_gguf
from edgeds.convert.layout import write_layout
from edgeds.convert.quantize import QuantizeError, plan_quantization, quantize
from edgeds.convert.recipes import RECIPES

pytestmark = pytest.mark.slow  # every test quantizes the tiny MoE built with transformers


def tensor_types(path):
    """name → (ggml type, dimensions in the file's order, bytes)."""
    return {t.name: (t.ggml_type.lower(), list(reversed(t.shape)), t.n_bytes) for t in read_file(path).tensors}


@pytest.fixture(scope="module")
def plain_q2(moe_f16, tmp_path_factory):
    """moe-q2 in llama.cpp's own tensor order."""
    return quantize(moe_f16, tmp_path_factory.mktemp("q") / "plain.gguf", "moe-q2")


@pytest.fixture(scope="module")
def laid_out(plain_q2):
    out = plain_q2.with_name("moe-q2.gguf")
    assert write_layout(plain_q2, out, recipe="moe-q2") == (out,)
    return out


@pytest.mark.parametrize("name", ["moe-q2", "moe-q3", "moe-q4"])
def test_recipe_writes_the_types_it_promises(moe_f16, plain_q2, tmp_path, name):
    recipe = RECIPES[name]
    plan = plan_quantization(moe_f16, name)
    out = plain_q2 if name == "moe-q2" else quantize(moe_f16, tmp_path / f"{name}.gguf", name)
    written = tensor_types(out)
    assert {t.name for t in plan.tensors} == set(written)
    checked = 0
    for t in plan.tensors:
        ttype, shape, nbytes = written[t.name]
        assert ttype == t.new_type.lower(), t.name
        assert nbytes == t.new_bytes, t.name
        rule = recipe.type_for(t.name)
        if rule and len(shape) > 1 and shape[0] % 256 == 0:  # no block-size fallback possible
            assert ttype == rule, t.name
            checked += 1
    assert checked >= 20
    gate, down = written["blk.1.ffn_gate_exps.weight"][0], written["blk.1.ffn_down_exps.weight"][0]
    order = ["q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "q8_0"]
    assert order.index(down) == order.index(gate) + 1  # down_proj one step above gate/up
    assert order.index(written["blk.1.attn_q_b.weight"][0]) > order.index(gate)
    assert written["blk.1.ffn_gate_inp.weight"][0] == "f32"  # the router stays F32
    assert not list(tmp_path.glob("*.partial"))


def test_dynamic_recipe_is_smaller_than_q4_k_m_and_refuses_nothing(moe_f16):
    sizes = {name: plan_quantization(moe_f16, name).total_bytes for name in ("moe-q2", "Q4_K_M", "Q8_0")}
    assert sizes["moe-q2"] < sizes["Q4_K_M"] < sizes["Q8_0"]


def test_layout_order_and_metadata(laid_out):
    info = read_gguf(laid_out)
    names = [t.name for t in info.tensors]
    first_expert = next(i for i, n in enumerate(names) if expert_layer(n) is not None)
    assert all(expert_layer(n) is None for n in names[:first_expert])
    experts = names[first_expert:]
    assert all(expert_layer(n) is not None for n in experts)
    assert experts == sorted(experts, key=lambda n: (expert_layer(n), ["gate", "up", "down"].index(n.split("_")[1])))
    assert info.metadata["edgeds.layout.version"] == 1
    by_layer = [0] * 3
    for t in info.tensors:
        if expert_layer(t.name) is not None:
            by_layer[expert_layer(t.name)] += t.n_bytes
    hot = sum(t.n_bytes for t in info.tensors if expert_layer(t.name) is None)
    assert info.layout == Layout(hot, tuple(by_layer), "moe-q2") and by_layer[0] == 0 < by_layer[1]


def _generate(path) -> str:
    import llama_cpp

    llm = llama_cpp.Llama(str(path), verbose=False, n_ctx=128)
    text = llm("The capital of France is", max_tokens=6, temperature=0.0)["choices"][0]["text"]
    llm.close()
    return text


def test_layout_and_split_files_load_in_stock_llama_cpp(laid_out, plain_q2, tmp_path):
    plain = plain_q2
    split = write_layout(plain_q2, tmp_path / "split.gguf", recipe="moe-q2", split=True)
    assert [p.name for p in split] == ["split-00001-of-00002.gguf", "split-00002-of-00002.gguf"]
    assert all(expert_layer(n) is not None for n in tensor_types(split[1]))
    assert all(expert_layer(n) is None for n in tensor_types(split[0]))
    reference = _generate(plain)
    assert reference  # same weights, same greedy text whatever the tensor order or file count
    assert _generate(laid_out) == reference
    assert _generate(split[0]) == reference
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in split]  # no partial left


def test_moe_offload_all_overrides_experts_to_cpu(laid_out):
    from edgeds.machine.placement import plan_placement
    from edgeds.llamacpp.binding import Model, captured_llama_log

    placement = plan_placement(laid_out, "all", n_ctx=256)
    assert placement.load_options.overrides
    with captured_llama_log() as log:
        model = Model(laid_out, placement.load_options)
    overridden = set(re.findall(r"tensor (\S+) \([^)]*\) buffer type overridden to CPU", "".join(log)))
    expected = {n for n in tensor_types(laid_out) if expert_layer(n) is not None}
    assert overridden == expected and len(expected) == 6
    del model


def test_unknown_override_device_names_the_available_ones(laid_out):
    from edgeds.errors import EdgedsError
    from edgeds.llamacpp.binding import LoadOptions, Model, TensorOverride

    with pytest.raises(EdgedsError, match="unknown device 'NoSuchGPU0'.*available devices are CPU"):
        Model(laid_out, LoadOptions(overrides=(TensorOverride("exps", "NoSuchGPU0"),)))


def test_imatrix_types_refuse_without_one(moe_f16, tmp_path):
    with pytest.raises(QuantizeError, match="IQ2_XXS needs an importance matrix.*--imatrix"):
        quantize(moe_f16, tmp_path / "x.gguf", "iq2_xxs")
    assert list(tmp_path.iterdir()) == []


def test_cli_dry_run_and_errors(moe_f16, tmp_path, capsys):
    from edgeds.cli import main

    try:
        main(["quantize", str(moe_f16), "moe-q4", "--dry-run"])
    except SystemExit as exc:
        assert not exc.code
    out = capsys.readouterr().out
    assert re.search(r"blk\.1\.ffn_down_exps\.weight\s+256x256x8\s+f16 -> q5_K", out)
    total = int(re.search(r"\((\d+) bytes of tensors\)", out).group(1))
    assert total == plan_quantization(moe_f16, "moe-q4").total_bytes
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SystemExit) as exc:
        main(["quantize", str(moe_f16), str(tmp_path / "o.gguf"), "Q9_Z"])
    assert exc.value.code != 0
    assert "unknown quantization 'Q9_Z'" in capsys.readouterr().err


TEXT = ("The quick brown fox jumps over the lazy dog. " * 3 + "Local models run on laptops through llama.cpp, "
        "which reads GGUF files and keeps the routed experts of a mixture-of-experts model in CPU memory. ") * 6


def test_eval_self_is_exact_and_quantized_diverges(moe_f16, plain_q2, tmp_path, capsys):
    from edgeds.cli import main
    from edgeds.measure.evaluate import evaluate

    same = evaluate(moe_f16, moe_f16, TEXT, n_ctx=64, max_chunks=2)
    assert same.n_tokens == 2 * 31 and same.kld_mean == pytest.approx(0.0, abs=1e-6) and same.top1_agree == 1.0
    assert same.ppl == pytest.approx(same.ref_ppl)
    q = evaluate(plain_q2, moe_f16, TEXT, n_ctx=64, max_chunks=2)
    assert q.kld_mean > 1e-4 and q.ref_ppl == pytest.approx(same.ppl, rel=1e-4)
    assert q.model_bytes < q.ref_bytes
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    try:
        main(["eval", str(plain_q2), "--ref", str(moe_f16), "--text", str(text), "--n-ctx", "64", "--chunks", "2"])
    except SystemExit as exc:
        assert not exc.code
    out = capsys.readouterr().out
    assert f"KLD mean        {q.kld_mean:.6f}" in out and "tokens scored   62" in out
    with pytest.raises(SystemExit):
        main(["eval", str(plain_q2), "--ref", str(moe_f16), "--text", str(text), "--n-ctx", "4096"])
    assert "needs at least 4096" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["run", "batch"])
def test_cli_moe_offload_all_explains_and_applies_the_plan(laid_out, tmp_path, command):
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "EDGEDS_LLAMA_LOG": "1"}
    if command == "run":
        args = ["run", str(laid_out), "hello", "--max-tokens", "4", "--temperature", "0", "--verbose"]
    else:
        rows = tmp_path / "in.jsonl"
        rows.write_text(json.dumps({"id": 1, "prompt": "hello", "max_tokens": 4}) + "\n")
        args = ["batch", str(rows), "-o", str(tmp_path / "out.jsonl"), "--model", str(laid_out), "--no-progress"]
    done = subprocess.run([sys.executable, "-m", "edgeds", *args, "--moe-offload", "all"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "experts of layers 1-2 on CPU" in done.stderr  # the one-line plan
    overridden = set(re.findall(r"tensor (\S+) \([^)]*\) buffer type overridden to CPU", done.stderr))
    assert overridden == {n for n in tensor_types(laid_out) if expert_layer(n) is not None}
