"""LoRA adapters: PEFT → GGUF adapter (`convert-lora`), `--lora` at run time, `convert --merge-lora`.

A rank-8 PEFT LoRA on q/k/v/o and the MLP gate/up/down, with random non-zero B, on the tiny
qwen2 and llama checkpoints: llama.cpp's logits with the adapter loaded at run time, and those
of the merged file, match transformers + peft (max abs diff < 1e-2, top-1 100%) while the adapter
moves the logits far more than that; scale 0 gives the base model back. Bad adapters fail with
one line naming what is wrong, and leave no output behind.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from edgeds.catalog.gguf import read_file
from edgeds.convert.lora import convert_lora
from edgeds.errors import ConversionError, EdgedsError, UsageError
from edgeds.runtime.lora import LoraSpec, check_adapter
from tests.cli_helpers import cli

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

PROMPT = "The R1 distills think first: <think>\n17 × 23 = 391\n</think>\n\n391. 你好，世界！ def f(x): return x**2"
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _ids(folder):
    from edgeds.convert.tokenizer import reference_ids

    return reference_ids(folder, PROMPT)


def make_adapter(base: Path, out: Path, ids, *, seed: int = 0, **config):
    """A PEFT LoRA on `base` with random non-zero B, saved to `out`; (out, adapted logits, base logits)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = {"r": 8, "lora_alpha": 16, "target_modules": list(TARGETS), **config}
    peft_model = get_peft_model(model, LoraConfig(**config)).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # PEFT starts B at zero: an adapter that changes nothing
                param.copy_(0.1 * torch.randn(param.shape, generator=gen))
    peft_model.save_pretrained(out)
    with torch.no_grad():
        adapted = peft_model(torch.tensor([ids])).logits[0].numpy()
        with peft_model.disable_adapter():
            plain = peft_model(torch.tensor([ids])).logits[0].numpy()
    return out, adapted, plain


@pytest.fixture(scope="module")
def case(dense_hf, tmp_path_factory):
    """arch → (hf folder, ids, adapter folder, peft logits, base logits), built once."""
    made = {}

    def get(arch: str, variant: str = "plain"):
        if (arch, variant) not in made:
            folder = dense_hf(arch)
            ids = _ids(folder)
            extra = {} if variant == "plain" else {
                "use_rslora": True, "rank_pattern": {"v_proj": 4}, "alpha_pattern": {"o_proj": 32}}
            out = tmp_path_factory.mktemp(f"lora-{arch}-{variant}") / "adapter"
            made[arch, variant] = (folder, ids, *make_adapter(folder, out, ids, **extra))
        return made[arch, variant]

    return get


@pytest.fixture(scope="module")
def adapter_gguf(case, tmp_path_factory):
    done = {}

    def get(arch: str, variant: str = "plain"):
        if (arch, variant) not in done:
            _, _, adapter, _, _ = case(arch, variant)
            out = tmp_path_factory.mktemp(f"lora-gguf-{arch}-{variant}") / "adapter.gguf"
            done[arch, variant] = convert_lora(adapter, out, outtype="f32")
        return done[arch, variant]

    return get


def _agree(got: np.ndarray, expected: np.ndarray, base: np.ndarray) -> None:
    assert got.shape == expected.shape
    assert np.abs(expected - base).max() > 0.5  # the adapter changes the model, so agreement means something
    assert np.abs(got - expected).max() < 1e-2
    assert (got.argmax(-1) == expected.argmax(-1)).all()


# -- conversion --------------------------------------------------------------------------------


@pytest.mark.slow
def test_adapter_gguf_layout(case, adapter_gguf):
    gguf = read_file(adapter_gguf("qwen2"), arrays=True)
    meta = gguf.metadata
    assert meta["general.type"] == "adapter" and meta["adapter.type"] == "lora"
    assert meta["general.architecture"] == "qwen2" and meta["adapter.lora.alpha"] == 16.0
    shapes = {t.name: t.shape for t in gguf.tensors}
    assert len(shapes) == 2 * 7 * 2  # 7 modules × 2 layers, a and b each
    assert shapes["blk.0.attn_q.weight.lora_a"] == (8, 64) and shapes["blk.0.attn_q.weight.lora_b"] == (64, 8)
    assert shapes["blk.1.attn_k.weight.lora_b"] == (32, 8)  # 2 kv heads × 16
    assert shapes["blk.1.ffn_down.weight.lora_a"] == (8, 128) and shapes["blk.1.ffn_down.weight.lora_b"] == (64, 8)


@pytest.mark.slow
def test_base_gguf_gives_the_same_adapter(case, adapter_gguf, dense_gguf, tmp_path):
    """--base MODEL.gguf: names, shapes and llama's q/k row permutation (head counts from the GGUF)."""
    _, _, adapter, _, _ = case("llama")
    out = convert_lora(adapter, tmp_path / "from-gguf.gguf", base=str(dense_gguf("llama", "f32")), outtype="f32")
    assert out.read_bytes() == adapter_gguf("llama").read_bytes()
    qwen3 = _copy(case("qwen3")[2], tmp_path / "qwen3")
    with pytest.raises(ConversionError, match=r"an adapter for Qwen3ForCausalLM \(qwen3\), but the base model .* is qwen2"):
        convert_lora(qwen3, tmp_path / "x.gguf", base=str(dense_gguf("qwen2", "f32")))
    _edit_config(qwen3, auto_mapping=None)  # without the record, the shapes still tell
    with pytest.raises(ConversionError, match=r"shape mismatch for model\.layers\.0\.self_attn\.k_proj: .*\[32, 64\]"):
        convert_lora(qwen3, tmp_path / "x.gguf", base=str(dense_gguf("qwen2", "f32")))


# -- runtime adapters and merged weights against transformers + peft ---------------------------


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["qwen2", "llama", "qwen3"])
def test_runtime_adapter_matches_peft(arch, case, adapter_gguf, dense_gguf):
    from edgeds.llamacpp.logits import adapter_logits

    _, ids, _, expected, base = case(arch)
    got = adapter_logits(dense_gguf(arch, "f32"), ids, [(adapter_gguf(arch), 1.0)], n_threads=2)
    _agree(got, expected, base)


@pytest.mark.slow
def test_rslora_and_patterns_match_peft(case, adapter_gguf, dense_gguf):
    """rank-stabilized scaling, a per-module rank and a per-module alpha (folded into lora_b)."""
    from edgeds.llamacpp.logits import adapter_logits

    _, ids, _, expected, base = case("qwen2", "patterns")
    path = adapter_gguf("qwen2", "patterns")
    assert read_file(path).metadata["adapter.lora.alpha"] == pytest.approx(16 * math.sqrt(8))
    assert read_file(path).tensor("blk.0.attn_v.weight.lora_a").shape == (4, 64)
    got = adapter_logits(dense_gguf("qwen2", "f32"), ids, [(path, 1.0)], n_threads=2)
    _agree(got, expected, base)


@pytest.mark.slow
def test_scale_zero_is_the_base_model(case, adapter_gguf, dense_gguf):
    from edgeds.llamacpp.logits import adapter_logits, all_logits

    _, ids, _, _, base = case("qwen2")
    model = dense_gguf("qwen2", "f32")
    got = adapter_logits(model, ids, [(adapter_gguf("qwen2"), 0.0)], n_threads=2)
    assert np.abs(got - base).max() < 1e-2
    assert np.array_equal(got, all_logits(model, ids, n_threads=2))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_merged_file_matches_peft(arch, case, tmp_path):
    from edgeds.convert import convert
    from edgeds.llamacpp.logits import all_logits

    folder, ids, adapter, expected, base = case(arch)
    merged = convert(folder, tmp_path / "merged.gguf", "f32", progress=False, merge_lora=adapter)
    _agree(all_logits(merged, ids, n_threads=2), expected, base)


@pytest.mark.slow
def test_cli_run_lora_changes_the_output(adapter_gguf, dense_gguf, capsys):
    model, adapter = dense_gguf("qwen2", "f32"), adapter_gguf("qwen2")
    common = ["run", model, "Count: one two three", "--temperature", "0", "--max-tokens", "4", "--json",
              "--n-ctx", "256", "--no-think-prefix", "--threads", "2"]
    capsys.readouterr()

    def text(extra: list) -> str:
        code, out, err = cli(common + extra, capsys)
        assert code == 0, err
        events = [json.loads(line) for line in out.splitlines()]
        assert events[-1]["stats"]["answer_tokens"] == 4
        return "".join(e.get("text", "") for e in events)

    plain = text([])
    assert text(["--lora", adapter]) != plain
    assert text(["--lora", f"{adapter}:0"]) == plain


@pytest.mark.slow
def test_scheduler_applies_the_adapter(adapter_gguf, dense_gguf):
    """open_scheduler(loras=...) (serve, batch): the scheduler's own context carries the adapter,
    so its greedy reply equals open_engine's with the adapter, and differs from one without."""
    from edgeds.events import collect
    from edgeds.loader import open_engine, open_scheduler
    from edgeds.runtime.params import GenerationParams

    model, loras = dense_gguf("qwen2", "f32"), (LoraSpec(adapter_gguf("qwen2")),)
    messages = [{"role": "user", "content": "Count: one two three"}]
    params = GenerationParams(temperature=0.0, max_tokens=6)
    replies = []
    for adapters in ((), loras):
        with open_engine(model, n_ctx=256, n_threads=2, think_prefix=False, loras=adapters) as engine:
            replies.append(collect(engine.generate(messages, params)))
    scheduler = open_scheduler(model, parallel=2, seq_ctx=256, n_threads=2, think_prefix=False, loras=loras)
    try:
        together = collect(scheduler.generate(messages, params))
    finally:
        scheduler.close()
        scheduler.engine.close()
    plain, adapted = replies
    assert adapted.stats.finish_reason == "length"
    assert (together.reasoning, together.answer) == (adapted.reasoning, adapted.answer)
    assert (plain.reasoning, plain.answer) != (adapted.reasoning, adapted.answer)


# -- bad input ---------------------------------------------------------------------------------


def _copy(adapter: Path, to: Path) -> Path:
    shutil.copytree(adapter, to)
    return to


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _fails(adapter, out: Path, match: str, **kwargs) -> None:
    with pytest.raises(ConversionError, match=match):
        convert_lora(adapter, out, **kwargs)
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()


def _write_adapter(folder: Path, tensors: dict[str, np.ndarray], base: str, r: int = 8) -> Path:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    save_file({k: v.astype(np.float32) for k, v in tensors.items()}, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": r, "lora_alpha": 16, "base_model_name_or_path": base}))
    return folder


def _pair(module: str, n_out: int, n_in: int, r: int = 8) -> dict[str, np.ndarray]:
    prefix = f"base_model.model.{module}"
    return {f"{prefix}.lora_A.weight": np.ones((r, n_in)), f"{prefix}.lora_B.weight": np.ones((n_out, r))}


def test_adapter_errors_name_the_problem(dense_hf, tmp_path):
    base = dense_hf("qwen2")
    good = _write_adapter(tmp_path / "good", {**_pair("model.layers.0.self_attn.q_proj", 64, 64),
                                              **_pair("model.layers.1.mlp.down_proj", 64, 128)}, str(base))
    out = tmp_path / "out.gguf"
    assert convert_lora(good, out, outtype="f32") == out  # the baseline converts
    out.unlink()

    rank = _copy(good, tmp_path / "rank")
    _edit_config(rank, r=4)
    _fails(rank, out, r"rank mismatch for model\.layers\.0\.self_attn\.q_proj: .* r = 4")

    narrow = _write_adapter(tmp_path / "narrow", _pair("model.layers.0.mlp.up_proj", 96, 64), str(base))
    _fails(narrow, out, r"shape mismatch for model\.layers\.0\.mlp\.up_proj: lora_B·lora_A is \[96, 64\], "
                        r"the base weight blk\.0\.ffn_up\.weight is \[128, 64\]")

    deep = _write_adapter(tmp_path / "deep", _pair("model.layers.7.self_attn.q_proj", 64, 64), str(base))
    _fails(deep, out, r"has no blk\.7\.attn_q\.weight")

    unknown = _write_adapter(tmp_path / "unknown", _pair("model.layers.0.mlp.gate_up_proj", 256, 64), str(base))
    _fails(unknown, out, r"target module mlp\.gate_up_proj .* is not supported for qwen2 \(supported: q_proj, ")

    head = _write_adapter(tmp_path / "head", _pair("lm_head", 151936, 64), str(base))
    _fails(head, out, r"targets lm_head: adapters on token embeddings or the output head are not supported")
    embed = _write_adapter(tmp_path / "embed", {"base_model.model.model.embed_tokens.lora_embedding_A": np.ones((8, 4))},
                           str(base))
    _fails(embed, out, r"lora_embedding_A' is not a LoRA weight")

    half = _write_adapter(tmp_path / "half", {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight":
                                              np.ones((8, 64))}, str(base))
    _fails(half, out, r"model\.layers\.0\.self_attn\.q_proj has no lora_B tensor")

    dora = _copy(good, tmp_path / "dora")
    _edit_config(dora, use_dora=True)
    _fails(dora, out, r"use_dora is set: DoRA adapters are not supported")

    fused = _copy(good, tmp_path / "fused")
    _edit_config(fused, target_parameters=["gate_up_proj"])
    _fails(fused, out, r"target_parameters is set: LoRA on parameters \(e\.g\. fused MoE experts\)")

    nobase = _copy(good, tmp_path / "nobase")
    _edit_config(nobase, base_model_name_or_path=str(tmp_path / "gone"))
    _fails(nobase, out, r"base_model_name_or_path .*gone.*: no such file or folder .*pass --base")
    assert convert_lora(nobase, out, base=str(base), outtype="f32") == out  # --base stands in
    out.unlink()


def test_missing_and_corrupt_files(dense_hf, tmp_path):
    base = dense_hf("qwen2")
    good = _write_adapter(tmp_path / "good", _pair("model.layers.0.self_attn.q_proj", 64, 64), str(base))
    out = tmp_path / "out.gguf"

    no_config = _copy(good, tmp_path / "no-config")
    (no_config / "adapter_config.json").unlink()
    _fails(no_config, out, r"adapter_config\.json: missing; a PEFT adapter folder has")

    no_weights = _copy(good, tmp_path / "no-weights")
    (no_weights / "adapter_model.safetensors").unlink()
    (no_weights / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    _fails(no_weights, out, r"adapter_model\.safetensors: missing \(adapter_model\.bin is a pickle")

    huge = _copy(good, tmp_path / "huge")
    weights = huge / "adapter_model.safetensors"
    weights.write_bytes(struct.pack("<Q", 1 << 60) + weights.read_bytes()[8:])
    _fails(huge, out, r"corrupt or truncated safetensors header \(claims 1152921504606846976 bytes\)")

    garbled = _copy(good, tmp_path / "garbled")
    weights = garbled / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:12] = b"{{{{"
    weights.write_bytes(bytes(data))
    _fails(garbled, out, r"corrupt safetensors header")

    _fails(tmp_path / "nowhere", out, r"not a PEFT adapter folder")


def test_deepseek2_maps_what_llama_cpp_applies(tmp_path):
    """deepseek2: attention output, dense and shared-expert FFNs convert; MLA projections and
    routed experts point to --merge-lora; a dense module in a MoE layer is not in the base."""
    from tests.tiny_moe_checkpoints import V3_SHAPE

    base = tmp_path / "v3"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({**V3_SHAPE, "architectures": ["DeepseekV3ForCausalLM"],
                                                  "model_type": "deepseek_v3"}))
    good = _write_adapter(tmp_path / "good", {
        **_pair("model.layers.0.self_attn.o_proj", 64, 4 * 48),
        **_pair("model.layers.0.mlp.gate_proj", 96, 64),
        **_pair("model.layers.1.mlp.shared_experts.down_proj", 64, 32),
    }, str(base))
    out = convert_lora(good, tmp_path / "v3-lora.gguf", outtype="f32")
    gguf = read_file(out)
    assert gguf.metadata["general.architecture"] == "deepseek2"
    assert {t.name for t in gguf.tensors} == {f"{w}.lora_{p}" for p in "ab" for w in (
        "blk.0.attn_output.weight", "blk.0.ffn_gate.weight", "blk.1.ffn_down_shexp.weight")}

    mla = _write_adapter(tmp_path / "mla", _pair("model.layers.0.self_attn.q_a_proj", 128, 64), str(base))
    _fails(mla, tmp_path / "x.gguf", r"llama\.cpp's deepseek2 graph does not apply adapters to it; .*--merge-lora")
    expert = _write_adapter(tmp_path / "expert", _pair("model.layers.1.mlp.experts.3.up_proj", 32, 64), str(base))
    _fails(expert, tmp_path / "x.gguf", r"mlp\.experts\.3\.up_proj .*--merge-lora")
    moe_dense = _write_adapter(tmp_path / "moe-dense", _pair("model.layers.2.mlp.up_proj", 96, 64), str(base))
    _fails(moe_dense, tmp_path / "x.gguf", r"has no blk\.2\.ffn_up\.weight")


@pytest.mark.slow
def test_runtime_refuses_what_does_not_fit(adapter_gguf, dense_gguf, tmp_path, capsys):
    qwen2_adapter = adapter_gguf("qwen2")
    with pytest.raises(EdgedsError, match=r"an adapter for 'qwen2' models, but .* is 'llama'"):
        check_adapter(qwen2_adapter, dense_gguf("llama", "f32"))
    with pytest.raises(EdgedsError, match=r"not a LoRA adapter GGUF \(general\.type 'model'"):
        check_adapter(dense_gguf("qwen2", "f32"), dense_gguf("qwen2", "f32"))
    with pytest.raises(EdgedsError, match=r"no such file"):
        check_adapter(tmp_path / "missing.gguf", dense_gguf("qwen2", "f32"))
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(qwen2_adapter.read_bytes()[:200])
    with pytest.raises(EdgedsError, match=r"truncated"):
        check_adapter(truncated, dense_gguf("qwen2", "f32"))
    # the CLI: one line, non-zero exit, before any generation
    capsys.readouterr()  # (what building the fixtures printed)
    code, out, err = cli(["run", dense_gguf("llama", "f32"), "hi", "--lora", qwen2_adapter], capsys)
    assert code == 1 and out == "" and err.count("\n") == 1 and "an adapter for 'qwen2' models" in err
    rows = tmp_path / "in.jsonl"
    rows.write_text('{"id": 1, "prompt": "hi"}\n')
    code, out, err = cli(["batch", rows, "-o", tmp_path / "out.jsonl", "-m", dense_gguf("qwen2", "f32"),
                          "--lora", tmp_path / "missing.gguf"], capsys)
    assert code == 1 and err.count("\n") == 1 and "missing.gguf: no such file" in err
    assert not (tmp_path / "out.jsonl").exists()


def test_lora_spec_parsing(tmp_path, capsys):
    assert LoraSpec.parse("a.gguf") == LoraSpec(Path("a.gguf"), 1.0)
    assert LoraSpec.parse("dir/a.gguf:0.5") == LoraSpec(Path("dir/a.gguf"), 0.5)
    assert LoraSpec.parse("x:y/a.gguf") == LoraSpec(Path("x:y/a.gguf"), 1.0)
    for bad, match in [("a.gguf:loud", "is not a number"), ("a.gguf:inf", "between -10 and 10"),
                       ("a.gguf:11", "between"), (":1", "give the adapter's GGUF file")]:
        with pytest.raises(UsageError, match=match):
            LoraSpec.parse(bad)
    code, _, err = cli(["run", "m.gguf", "hi", "--lora", "a.gguf:loud"], capsys)
    assert code == 2 and "--lora a.gguf:loud: the scale 'loud' is not a number" in err
    code, _, err = cli(["run", "m", "hi", "--lora", "a.gguf", "--endpoint", "http://127.0.0.1:9"], capsys)
    assert code == 2 and "--lora applies to a local model" in err


def test_merge_refuses_verify_and_mismatch(dense_hf, tmp_path):
    from edgeds.convert import convert

    base = dense_hf("qwen2")
    wide = _write_adapter(tmp_path / "wide", _pair("model.layers.0.mlp.up_proj", 96, 64), str(base))
    with pytest.raises(UsageError, match="--verify compares with the source model"):
        convert(base, tmp_path / "m.gguf", "f32", verify=True, merge_lora=wide, progress=False)
    with pytest.raises(ConversionError, match=r"shape mismatch for model\.layers\.0\.mlp\.up_proj: .* "
                                              r"model\.layers\.0\.mlp\.up_proj\.weight is \[128, 64\]"):
        convert(base, tmp_path / "m.gguf", "f32", merge_lora=wide, progress=False)
    missing = _write_adapter(tmp_path / "missing", _pair("model.layers.0.self_attn.q_a_proj", 64, 64), str(base))
    with pytest.raises(ConversionError, match=r"has no model\.layers\.0\.self_attn\.q_a_proj\.weight"):
        convert(base, tmp_path / "m.gguf", "f32", merge_lora=missing, progress=False)
    assert not list(tmp_path.glob("m.gguf*"))


@pytest.mark.slow
def test_deepseek2_adapter_and_merge_match_transformers(tmp_path):
    """deepseek2 (tiny V3: MLA, a dense layer, shared + routed experts). PEFT with transformers 5
    turns `gate_proj`-style targets of MoE models into fused-expert parameters, so the adapter is
    written here in PEFT's file format and the reference is transformers with W + alpha/r·B·A put
    into its weights. At run time: attention output, dense and shared-expert FFNs; merged: those
    and every MLA projection (kv_b_proj goes through the converter's k_b/v_b split)."""
    from safetensors.numpy import save_file
    from transformers import AutoModelForCausalLM

    from edgeds.convert import convert
    from edgeds.convert.tokenizer import reference_ids
    from edgeds.llamacpp.logits import adapter_logits, all_logits
    from tests.tiny_moe_checkpoints import build_deepseek_v3

    src = build_deepseek_v3(tmp_path / "hf")
    ids = reference_ids(src, "DeepSeek-V3 routes each token to 2 of 8 experts. 你好 def f(x): return x**2")
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        plain = model(torch.tensor([ids])).logits[0].numpy()

    def adapter(folder: Path, modules: list[str], seed: int):
        rng = np.random.default_rng(seed)
        tensors, weights = {}, {k: v.clone() for k, v in original.items()}
        for module in modules:
            n_out, n_in = original[module + ".weight"].shape
            a = (rng.standard_normal((8, n_in)) / math.sqrt(n_in)).astype(np.float32)
            b = (0.1 * rng.standard_normal((n_out, 8))).astype(np.float32)
            tensors[f"base_model.model.{module}.lora_A.weight"], tensors[f"base_model.model.{module}.lora_B.weight"] = a, b
            weights[module + ".weight"] += 2.0 * torch.from_numpy(b) @ torch.from_numpy(a)  # alpha 16 / r 8
        folder.mkdir()
        save_file(tensors, str(folder / "adapter_model.safetensors"))
        (folder / "adapter_config.json").write_text(json.dumps(
            {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "base_model_name_or_path": str(src)}))
        model.load_state_dict(weights)
        with torch.no_grad():
            expected = model(torch.tensor([ids])).logits[0].numpy()
        model.load_state_dict(original)
        return folder, expected

    runtime = ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj"] + [
        f"model.layers.{i}.{m}" for i in range(3) for m in ("self_attn.o_proj",)] + [
        f"model.layers.{i}.mlp.shared_experts.{m}_proj" for i in (1, 2) for m in ("gate", "up", "down")]
    folder, expected = adapter(tmp_path / "runtime", runtime, seed=0)
    base = convert(src, tmp_path / "base.gguf", "f32", progress=False)
    lora = convert_lora(folder, tmp_path / "lora.gguf", outtype="f32")
    _agree(adapter_logits(base, ids, [(lora, 1.0)], n_threads=2), expected, plain)

    mla = [f"model.layers.{i}.self_attn.{m}" for i in range(3)
           for m in ("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj")]
    folder, expected = adapter(tmp_path / "merge", runtime + mla, seed=1)
    merged = convert(src, tmp_path / "merged.gguf", "f32", progress=False, merge_lora=folder)
    _agree(all_logits(merged, ids, n_threads=2), expected, plain)


@pytest.mark.slow
def test_adapter_and_base_config_from_the_hub(dense_hf, tmp_path):
    """`convert-lora owner/name`: the adapter's two files and its base's config.json come through
    edgeds' hub client (a fake hub on 127.0.0.1 via HF_ENDPOINT)."""
    import os
    import subprocess
    import sys

    from tests.hub_server import FakeHub

    base = dense_hf("qwen2")
    local = _write_adapter(tmp_path / "local", {**_pair("model.layers.0.self_attn.q_proj", 64, 64),
                                                **_pair("model.layers.1.mlp.up_proj", 128, 64)}, "acme/tiny-qwen2")
    hub = FakeHub().start()
    try:
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            hub.add("acme/tiny-lora", name, (local / name).read_bytes())
        hub.add("acme/tiny-qwen2", "config.json", (base / "config.json").read_bytes())
        env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="0",
                   HF_HUB_DISABLE_XET="1")
        out = tmp_path / "hub-lora.gguf"
        done = subprocess.run([sys.executable, "-m", "edgeds", "convert-lora", "acme/tiny-lora", "-o", str(out),
                               "--outtype", "f32"], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        expected = convert_lora(local, tmp_path / "local.gguf", base=str(base), outtype="f32")
        assert read_file(out).metadata["general.architecture"] == "qwen2"
        assert [t.name for t in read_file(out).tensors] == [t.name for t in read_file(expected).tensors]
        missing = subprocess.run([sys.executable, "-m", "edgeds", "convert-lora", "acme/no-such-lora", "-o",
                                  str(tmp_path / "x.gguf")], env=env, capture_output=True, text=True, timeout=120)
        assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "acme/no-such-lora" in missing.stderr
    finally:
        hub.stop()
