"""The packaged registry loads and is complete; a malformed user models.toml fails with a
message naming the file, line, entry and key."""

from __future__ import annotations

import pytest

from edgeds.errors import EdgedsError
from edgeds.catalog.registry import PACKAGED_REGISTRY, load_registry, split_spec, user_registry_path

EXPECTED_IDS = {
    "r1-distill-qwen-1.5b", "r1-distill-qwen-7b", "r1-distill-qwen-14b", "r1-distill-qwen-32b",
    "r1-distill-llama-8b", "r1-distill-llama-70b", "r1-0528-qwen3-8b", "v2-lite-chat",
    "coder-v2-lite-instruct", "v3", "r1",
}

USER_ENTRY = '''
[models."my-model"]
name = "My model"
source = "me/my-model"
architecture = "llama"
license = "MIT"
params_total = 135000000
params_active = 135000000
context_length = 8192
default_quant = "Q4_1"
generation = { temperature = 0.6, top_p = 0.95, allow_system = true, forces_think = false, max_tokens = 512 }
shape = { n_layers = 30, n_embd = 576, n_head = 9, n_head_kv = 3, head_dim = 64, n_ff = 1536, n_vocab = 49152 }

[models."my-model".quants]
Q4_1 = { repo = "me/my-model-GGUF", files = [{ name = "my-model.Q4_1.gguf", size = 100 }] }
'''


@pytest.fixture(autouse=True)
def _no_user_registry():
    """The isolated home is shared by the session: leave no user registry behind."""
    user_registry_path().unlink(missing_ok=True)
    yield
    user_registry_path().unlink(missing_ok=True)


def write_user(text: str):
    path = user_registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_packaged_registry_has_the_deepseek_family():
    reg = load_registry()
    assert set(e.id for e in reg) >= EXPECTED_IDS
    assert reg.default_chat == "r1-distill-qwen-1.5b:Q4_K_M"
    small = reg.get("r1-distill-qwen-1.5b")
    assert small.quant("q4_k_m").files[0].size == 1_117_320_576
    assert small.generation.forces_think and not small.generation.allow_system
    assert (small.generation.temperature, small.generation.top_p) == (0.6, 0.95)
    r1 = reg.get("r1")
    assert r1.shape.is_mla and r1.shape.is_moe and r1.shape.kv_lora_rank == 512
    ud = r1.quant("UD-IQ1_S")
    assert len(ud.files) == 3 and all("-of-00003.gguf" in f.name for f in ud.files)
    for entry in reg:  # split GGUFs list every part
        for q in entry.quants.values():
            names = [f.name for f in q.files]
            if "-00001-of-" in names[0]:
                total = int(names[0].split("-of-")[1][:5])
                assert len(names) == total, (entry.id, q.quant)


def test_packaged_file_is_the_repo_root_file():
    assert PACKAGED_REGISTRY.resolve() == (PACKAGED_REGISTRY.parents[2] / "models.toml").resolve()


def test_user_registry_adds_and_overrides():
    write_user(USER_ENTRY + '\n[models."r1-distill-qwen-7b"]\ncontext_length = 32768\n')
    reg = load_registry()
    assert reg.get("my-model").quant(None).repo == "me/my-model-GGUF"
    seven = reg.get("r1-distill-qwen-7b")
    assert seven.context_length == 32768
    assert seven.shape.n_layers == 28  # the rest of the packaged entry stays


def error_of(text: str) -> str:
    path = write_user(text)
    with pytest.raises(EdgedsError) as info:
        load_registry()
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_bad_toml_syntax_names_the_line():
    msg = error_of('[models."x"]\nname = "ok"\nsource = = "broken"\n')
    assert f"{user_registry_path()}:3:" in msg and "invalid TOML" in msg


def test_wrong_type_names_entry_and_key():
    msg = error_of(USER_ENTRY.replace("context_length = 8192", 'context_length = "8k"'))
    assert "entry 'my-model'" in msg and "key 'context_length'" in msg and "must be int" in msg
    lineno = USER_ENTRY.splitlines().index("context_length = 8192") + 1
    assert f"models.toml:{lineno}:" in msg


def test_unknown_quant_names_entry_and_key():
    msg = error_of(USER_ENTRY.replace("Q4_1 = {", "Q4_WHAT = {").replace('default_quant = "Q4_1"', 'default_quant = "Q4_WHAT"'))
    assert "entry 'my-model'" in msg and "key 'quants.Q4_WHAT'" in msg and "unknown quant" in msg


def test_missing_required_key():
    msg = error_of(USER_ENTRY.replace('source = "me/my-model"\n', ""))
    assert "entry 'my-model'" in msg and "key 'source'" in msg and "missing" in msg


def test_missing_nested_key_and_unknown_key():
    msg = error_of(USER_ENTRY.replace("n_head_kv = 3, ", ""))
    assert "key 'shape.n_head_kv'" in msg and "missing" in msg
    msg = error_of(USER_ENTRY.replace("max_tokens = 512", "max_tokens = 512, temprature = 1"))
    assert "key 'generation.temprature'" in msg and "unknown key" in msg


def test_bool_is_not_an_int():
    msg = error_of(USER_ENTRY.replace("n_layers = 30", "n_layers = true"))
    assert "key 'shape.n_layers'" in msg


def test_split_spec():
    assert split_spec("R1-Distill-Qwen-1.5B:Q8_0") == ("r1-distill-qwen-1.5b", "Q8_0")
    assert split_spec("v3") == ("v3", None)
