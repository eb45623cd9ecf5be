"""Tokenizer conversion: vocab-only GGUFs from the real DeepSeek / Llama 3 tokenizers, read by llama.cpp.

llama.cpp's tokenizer, loading the `tokenizer.*` keys that `vocab_metadata` writes, must give the
same ids as the `tokenizers` library (the source tokenizer) on varied text, with the same BOS
behaviour, and must pass llama.cpp's own tokenizer test vectors.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from edgeds.convert.tokenizer import (
    TOKEN_CONTROL,
    TOKEN_NORMAL,
    TOKEN_UNUSED,
    TOKEN_USER_DEFINED,
    reference_ids,
    vocab_metadata,
)
from edgeds.errors import ConversionError

llama_cpp = pytest.importorskip("llama_cpp")
tokenizers = pytest.importorskip("tokenizers")

FIXTURES = Path(os.environ.get("EDGEDS_FIXTURES", Path(__file__).resolve().parents[3] / "shared" / "fixtures"))
VECTORS = Path(__file__).resolve().parents[1] / "data" / "vocab"

# fixture folder, config vocab_size (embedding rows, padded), expected pre name, arch for the header
TOKENIZERS = {
    "r1-distill-qwen": ("deepseek-r1-distill-qwen-tokenizer", 152064, "deepseek-r1-qwen", "qwen2"),
    "deepseek-v3": ("deepseek-v3-tokenizer", 129280, "deepseek-v3", "deepseek2"),
    "llama3": ("llama3-tokenizer", 128256, "llama-bpe", "llama"),
}

TEXTS = [
    "Hello world",
    " Hello World!  How's it going? I'VE been 'told he's there, 'RE you sure?",
    "Grüße aus Köln. Привет, как дела? Γειά σου κόσμε. नमस्ते दुनिया",
    "你好，世界！这是一个测试。日本語のテキストも、カタカナもある。한국어 문장입니다.",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n\n\tprint(fib(10))  # 55\n",
    "int main() { std::vector<int> v{1,2,3}; for (auto& x : v) x *= 2; return 0; }",
    "3 33 333 3333 33333 3.3 3..3 3...3 1234567890 ½ ²",
    "emoji 🦙🚀 and ZWJ 👨‍👩‍👧 ------======= \u00a0nbsp\u2009thin",
    "   leading spaces\n\n\n\ttabs\r\n windows line\n   ",
    "",
]


def _special_text(source: Path) -> str:
    """A text that uses some of the tokenizer's own added tokens, special and not."""
    added = json.loads((source / "tokenizer.json").read_text(encoding="utf-8"))["added_tokens"]
    pick = [t["content"] for t in added if t["special"]][1:4] + [t["content"] for t in added if not t["special"]][:3]
    return "Question:" + pick[0] + " why?" + "".join(f" {tok}x{i}" for i, tok in enumerate(pick[1:])) + " end" + pick[0]


def write_vocab_gguf(path: Path, arch: str, meta: dict[str, object]) -> None:
    """A tensor-less GGUF holding `meta`, written by the converter's own GGUF writer."""
    from edgeds.convert.gguf_writer import GGUFWriter

    writer = GGUFWriter()
    writer.add("general.architecture", arch)
    for key, value in meta.items():
        writer.add(key, value)
    writer.open(path)
    writer.close()


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """Convert a fixture tokenizer to a vocab-only GGUF once per module and load it in llama.cpp."""
    cache: dict[str, tuple] = {}

    def _build(name: str):
        if name not in cache:
            folder, vocab_size, _, arch = TOKENIZERS[name]
            source = FIXTURES / folder
            meta = vocab_metadata(source, vocab_size)
            path = tmp_path_factory.mktemp("vocab") / f"{name}.gguf"
            write_vocab_gguf(path, arch, meta)
            llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
            cache[name] = (name, source, meta, llm)
        return cache[name]

    return _build


@pytest.fixture(params=list(TOKENIZERS))
def converted(request, build):
    return build(request.param)


def test_pre_tokenizer_name_and_basics(converted):
    name, source, meta, llm = converted
    _, vocab_size, pre, _ = TOKENIZERS[name]
    assert meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.ggml.pre"] == pre
    assert llm.n_vocab() == vocab_size
    tok = json.loads((source / "tokenizer.json").read_text(encoding="utf-8"))
    assert len(meta["tokenizer.ggml.merges"]) == len(tok["model"]["merges"])
    assert all(m.count(" ") == 1 for m in meta["tokenizer.ggml.merges"][:1000])
    cfg = json.loads((source / "tokenizer_config.json").read_text(encoding="utf-8"))
    if "chat_template" in cfg:
        assert meta["tokenizer.chat_template"] == cfg["chat_template"]
        assert llm.metadata["tokenizer.chat_template"] == cfg["chat_template"]
    else:
        assert "tokenizer.chat_template" not in meta


@pytest.mark.slow
def test_ids_match_source_tokenizer(converted):
    name, source, meta, llm = converted
    texts = TEXTS + [_special_text(source)]
    bos = meta["tokenizer.ggml.bos_token_id"]
    for text in texts:
        expected = reference_ids(source, text)
        got = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        assert got == expected, (name, text)
        assert got[0] == bos  # all three models are used with a BOS


def test_bos_behaviour_follows_the_source(converted):
    """reference_ids' BOS is what the source tokenizer does, not an assumption of ours."""
    name, source, meta, llm = converted
    tok = tokenizers.Tokenizer.from_file(str(source / "tokenizer.json"))
    text = "Hello <think> world"
    with_special = tok.encode(text, add_special_tokens=True).ids
    plain = tok.encode(text, add_special_tokens=False).ids
    cfg = json.loads((source / "tokenizer_config.json").read_text(encoding="utf-8"))
    if with_special != plain:  # the post-processor adds BOS itself (R1-Distill-Qwen, Llama 3)
        assert reference_ids(source, text) == with_special
    else:  # DeepSeek-V3: tokenizer_config's add_bos_token makes the Llama tokenizer class add it
        assert cfg["add_bos_token"] is True
        assert reference_ids(source, text) == [meta["tokenizer.ggml.bos_token_id"], *plain]
    assert meta["tokenizer.ggml.add_bos_token"] is True
    assert meta["tokenizer.ggml.add_eos_token"] is False
    assert llm.tokenize(b"x", add_bos=False, special=True) == tok.encode("x", add_special_tokens=False).ids


def test_token_types_and_padding(converted):
    name, source, meta, llm = converted
    tok = json.loads((source / "tokenizer.json").read_text(encoding="utf-8"))
    vocab_size = TOKENIZERS[name][1]
    types = meta["tokenizer.ggml.token_type"]
    tokens = meta["tokenizer.ggml.tokens"]
    assert len(types) == len(tokens) == vocab_size
    model = llm._model
    for added in tok["added_tokens"]:
        want = TOKEN_CONTROL if added["special"] else TOKEN_USER_DEFINED
        assert types[added["id"]] == want and tokens[added["id"]] == added["content"]
        attr = model.token_get_attr(added["id"])
        flag = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL if added["special"] else llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
        assert attr & flag, (added["content"], attr)
    used = set(tok["model"]["vocab"].values()) | {a["id"] for a in tok["added_tokens"]}
    padding = [i for i in range(vocab_size) if i not in used]
    for i in padding:
        assert tokens[i] == f"[PAD{i}]" and types[i] == TOKEN_UNUSED
    for i in padding[:3] + padding[-3:]:
        assert model.token_get_attr(i) & llama_cpp.LLAMA_TOKEN_ATTR_UNUSED
    some_normal = tok["model"]["vocab"]["Hello"]
    assert types[some_normal] == TOKEN_NORMAL
    assert model.token_get_attr(some_normal) & llama_cpp.LLAMA_TOKEN_ATTR_NORMAL
    if name == "r1-distill-qwen":  # 151665 real tokens padded to the 7B+ embedding size
        assert padding == list(range(151665, 152064))


def _vectors(name: str) -> list[tuple[str, list[int]]]:
    texts = (VECTORS / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    outs = (VECTORS / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").split("\n")
    assert texts[-1] == "" and outs[-1] == ""
    pairs = list(zip(texts[:-1], outs[:-1], strict=True))
    return [(text, [int(x) for x in out.split()]) for text, out in pairs]


@pytest.mark.parametrize(("name", "vectors"), [("r1-distill-qwen", "qwen2"), ("llama3", "llama-bpe")])
def test_llama_cpp_tokenizer_vectors(name, vectors, build):
    llm = build(name)[3]
    cases = _vectors(vectors)
    assert len(cases) > 30
    for text, ids in cases:
        assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=False) == ids, text


def _copy_fixture(tmp_path: Path, folder: str = "deepseek-r1-distill-qwen-tokenizer") -> Path:
    target = tmp_path / "model"
    shutil.copytree(FIXTURES / folder, target)
    return target


def test_missing_tokenizer_json_names_the_file(tmp_path):
    model = _copy_fixture(tmp_path)
    (model / "tokenizer.json").unlink()
    with pytest.raises(ConversionError, match=r"tokenizer\.json: missing"):
        vocab_metadata(model, 152064)


def test_unreadable_tokenizer_json_names_the_file(tmp_path):
    model = _copy_fixture(tmp_path)
    (model / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab"', encoding="utf-8")
    with pytest.raises(ConversionError, match=r"tokenizer\.json: not valid JSON"):
        vocab_metadata(model, 152064)


@pytest.mark.slow
def test_unknown_pre_tokenizer_is_refused(tmp_path):
    model = _copy_fixture(tmp_path)
    data = json.loads((model / "tokenizer.json").read_text(encoding="utf-8"))
    data["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{N}{1,5}|\s+"
    (model / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ConversionError, match=r"tokenizer\.json: unrecognised pre-tokenizer"):
        vocab_metadata(model, 152064)


def test_vocab_size_smaller_than_tokenizer_is_refused():
    with pytest.raises(ConversionError, match="vocab_size 1000"):
        vocab_metadata(FIXTURES / "deepseek-v3-tokenizer", 1000)


def _edit_config(model: Path, **changes) -> None:
    path = model / "tokenizer_config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg.update(changes)
    path.write_text(json.dumps(cfg), encoding="utf-8")


@pytest.mark.slow
def test_llama_tokenizer_class_follows_its_add_bos_flag(tmp_path):
    """LlamaTokenizerFast rebuilds its post-processor from add_bos_token: false means no BOS."""
    model = _copy_fixture(tmp_path)
    _edit_config(model, add_bos_token=False)
    assert vocab_metadata(model, None)["tokenizer.ggml.add_bos_token"] is False
    assert reference_ids(model, "Hi") == tokenizers.Tokenizer.from_file(str(model / "tokenizer.json")).encode(
        "Hi", add_special_tokens=False
    ).ids


@pytest.mark.slow
def test_other_tokenizer_classes_follow_the_post_processor(tmp_path):
    """PreTrainedTokenizerFast ignores add_bos_token; Llama 3's template adds BOS regardless."""
    model = _copy_fixture(tmp_path, "llama3-tokenizer")
    _edit_config(model, add_bos_token=False)
    assert vocab_metadata(model, None)["tokenizer.ggml.add_bos_token"] is True
    assert reference_ids(model, "Hi")[0] == 128000


def test_named_chat_templates(tmp_path):
    model = _copy_fixture(tmp_path)
    _edit_config(model, chat_template=[{"name": "default", "template": "A"}, {"name": "tool_use", "template": "B"}])
    meta = vocab_metadata(model, None)
    assert meta["tokenizer.chat_template"] == "A" and meta["tokenizer.chat_template.tool_use"] == "B"


def test_chat_template_jinja_file(tmp_path):
    model = _copy_fixture(tmp_path)
    _edit_config(model, chat_template=None)
    (model / "chat_template.jinja").write_text("{{ messages }}", encoding="utf-8")
    assert vocab_metadata(model, None)["tokenizer.chat_template"] == "{{ messages }}"
