"""The tokenizer half of a GGUF file: every `tokenizer.*` key, read from the source's own files.

Reads `tokenizer.json` / `tokenizer_config.json` (and `config.json` for fallback ids) directly; no
transformers, no repository code. The llama.cpp pre-tokenizer name is chosen from the tokenizer's
own pre-tokenizer definition (its split regexes and byte-level step), looked up in
`PRE_TOKENIZERS`, not from a hash of some library's output.

Value types follow the converter's metadata convention: `int` → uint32, `float` → float32,
`bool` → bool, `str` → string, `list[str]` → string array, `list[int]` → int32 array
(`tokenizer.ggml.token_type` is the only int array).

BOS rule (what the source tokenizer does when it encodes a plain text, as the transformers
versions the models shipped with did it):
1. A Llama tokenizer class (`tokenizer_class` LlamaTokenizer[Fast], as DeepSeek's configs name)
   rebuilds its post-processor from `add_bos_token` / `add_eos_token`, so those flags decide.
   The DeepSeek-V3/R1 tokenizer.json has no BOS in its post-processor, yet its config says
   `add_bos_token: true` and the model is trained and served with BOS.
2. Otherwise a `TemplateProcessing` post-processor decides: BOS is added when the single-sequence
   template starts with the BOS token (EOS: ends with the EOS token).
3. Otherwise the config flags, if any; else nothing is added.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

from edgeds.convert.checkpoint import load_json
from edgeds.errors import ConversionError

# Tokenizer classes that rebuild their post-processor from add_bos_token / add_eos_token.
LLAMA_TOKENIZER_CLASSES = ("LlamaTokenizer", "LlamaTokenizerFast", "CodeLlamaTokenizer", "CodeLlamaTokenizerFast")

MAX_TOKEN_ID = (1 << 31) - 1  # llama.cpp's llama_token is an int32

# llama.cpp token types (include/llama.h, llama_token_type).
TOKEN_NORMAL = 1
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4
TOKEN_UNUSED = 5

_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Non-ASCII characters are written as escapes: some of these ranges end in characters that
# Unicode normalization would silently replace (e.g. U+1F7D), which breaks the ranges.
_DEEPSEEK_V3_SPLITS = (
    r"\p{N}{1,3}",
    "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
    "| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
)
_DEEPSEEK_LLM_SPLITS = (
    "[\r\n]",
    "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373"
    "\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f"
    "\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77"
    "\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d"
    "\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4"
    "\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139"
    "\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d"
    "\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a"
    "\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2"
    "\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+",
    "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
    "\\s+$",
    "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+",
    "\\p{N}+",
)


def _literal_newlines(regex: str) -> str:
    """`\\r`/`\\n` escapes as the characters themselves: tokenizer.json files write either."""
    return re.sub(r"(?<!\\)\\([rn])", lambda m: "\r" if m.group(1) == "r" else "\n", regex)


def _splits_then_bytes(*regexes: str) -> tuple[tuple[object, ...], ...]:
    """The canonical form of `Sequence[Split(regex, Isolated)..., ByteLevel(no regex)]`."""
    splits = tuple(("split", _literal_newlines(rx), "Isolated", False) for rx in regexes)
    return splits + (("byte_level", False, False),)


# Recognised pre-tokenizer definitions (canonical form, see `_canonical_pre`) → tokenizer.ggml.pre.
# The name selects llama.cpp's runtime splitting rules; an unlisted definition is refused.
PRE_TOKENIZERS: dict[tuple[tuple[object, ...], ...], str] = {
    # DeepSeek-R1-Distill-Qwen, R1-0528-Qwen3 (Qwen2's split; llama.cpp runs it as qwen2)
    _splits_then_bytes(_QWEN2_SPLIT): "deepseek-r1-qwen",
    # Meta Llama 3 (R1-Distill-Llama)
    _splits_then_bytes(_LLAMA3_SPLIT): "llama-bpe",
    # DeepSeek-V3, V3-0324, R1, R1-0528
    _splits_then_bytes(*_DEEPSEEK_V3_SPLITS): "deepseek-v3",
    # DeepSeek LLM / V2 / V2-Lite: the split list llama.cpp implements for `deepseek-llm`. No V2
    # tokenizer.json is available here; a tokenizer built with these splits around the vocabulary of
    # llama.cpp's ggml-vocab-deepseek-llm.gguf reproduces all 46 of its test vectors.
    _splits_then_bytes(*_DEEPSEEK_LLM_SPLITS): "deepseek-llm",
}


def _read_json(path: Path, *, required: bool) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise ConversionError(f"{path}: missing; the tokenizer needs it (a BPE tokenizer.json)")
        return {}
    return load_json(path, "a tokenizer file")


def _canonical_pre(pre: Any) -> tuple[tuple[object, ...], ...] | None:
    """Reduce a tokenizer.json pre_tokenizer to the parts that decide how text is split
    (None for anything not made of the steps below)."""
    if not isinstance(pre, dict):
        return None
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    if not isinstance(steps, list) or not all(isinstance(step, dict) for step in steps):
        return None
    out: list[tuple[object, ...]] = []
    for step in steps:
        kind = step.get("type")
        if kind == "Split":
            pattern = step.get("pattern")
            if not isinstance(pattern, dict) or not isinstance(pattern.get("Regex"), str):
                return None
            out.append(("split", _literal_newlines(pattern["Regex"]), step.get("behavior"), bool(step.get("invert"))))
        elif kind == "ByteLevel":
            out.append(("byte_level", bool(step.get("add_prefix_space")), bool(step.get("use_regex", True))))
        else:
            return None
    return tuple(out)


def _normalizer_is_identity(normalizer: Any) -> bool:
    if normalizer is None:
        return True
    return isinstance(normalizer, dict) and normalizer.get("type") == "Sequence" and not normalizer.get("normalizers")


def _token_content(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _post_template_adds(post: Any, bos_or_eos: str, token: str | None) -> bool | None:
    """Whether a TemplateProcessing post-processor puts `token` first (bos) / last (eos)."""
    if token is None or not isinstance(post, dict):
        return None
    processors = post.get("processors", []) if post.get("type") == "Sequence" else [post]
    for proc in processors if isinstance(processors, list) else []:
        if not isinstance(proc, dict) or proc.get("type") != "TemplateProcessing":
            continue
        single = proc.get("single")
        piece = (single[0] if bos_or_eos == "bos" else single[-1]) if isinstance(single, list) and single else None
        special = piece.get("SpecialToken") if isinstance(piece, dict) else None
        return isinstance(special, dict) and special.get("id") == token
    return None


def _is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKEN_ID


class _Source:
    """The parsed tokenizer files of one model folder."""

    def __init__(self, model_dir: Path) -> None:
        self.path = model_dir / "tokenizer.json"
        self.tok = _read_json(self.path, required=True)
        self.cfg_path = model_dir / "tokenizer_config.json"
        self.cfg = _read_json(self.cfg_path, required=False)
        self.model_cfg = _read_json(model_dir / "config.json", required=False)
        self.model_dir = model_dir
        model = self.tok.get("model")
        if not isinstance(model, dict) or model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
            raise ConversionError(f"{self.path}: not a BPE tokenizer (model.type must be 'BPE')")
        if model.get("byte_fallback"):
            raise ConversionError(f"{self.path}: byte_fallback BPE (sentencepiece-style) is not supported")
        self.model = model
        added = self.tok.get("added_tokens") or []
        if not isinstance(added, list):
            raise ConversionError(f"{self.path}: added_tokens must be a list")
        for i, tok in enumerate(added):
            if not (isinstance(tok, dict) and isinstance(tok.get("content"), str) and _is_token_id(tok.get("id"))):
                raise ConversionError(f"{self.path}: added_tokens[{i}] needs a string 'content' and an 'id' "
                                      f"from 0 to {MAX_TOKEN_ID}")
        bad = next((text for text, i in model["vocab"].items() if not _is_token_id(i)), None)
        if bad is not None:
            raise ConversionError(f"{self.path}: model.vocab gives {bad!r} the id {model['vocab'][bad]!r}, "
                                  f"not an integer from 0 to {MAX_TOKEN_ID}")
        merges = model.get("merges") or []
        if not isinstance(merges, list) or not all(
                isinstance(m, str) or (isinstance(m, list) and len(m) == 2 and all(isinstance(x, str) for x in m))
                for m in merges):
            raise ConversionError(f"{self.path}: model.merges must list \"a b\" strings or [a, b] pairs")
        if not model["vocab"] and not added:
            raise ConversionError(f"{self.path}: the vocabulary is empty")
        self.added: list[dict[str, Any]] = added
        self.ids: dict[str, int] = dict(model["vocab"])
        for tok in self.added:
            self.ids[tok["content"]] = tok["id"]

    def token_id(self, kind: str) -> int | None:
        content = _token_content(self.cfg.get(f"{kind}_token"))
        if content is not None:
            if content not in self.ids:
                raise ConversionError(f"{self.cfg_path}: {kind}_token {content!r} is not in {self.path.name}")
            return self.ids[content]
        fallback = self.model_cfg.get(f"{kind}_token_id")
        return fallback if isinstance(fallback, int) and not isinstance(fallback, bool) else None

    def adds(self, kind: str) -> bool:
        """Whether encoding adds `kind` ("bos" / "eos"); see the BOS rule in the module docstring."""
        flag = self.cfg.get(f"add_{kind}_token")
        if isinstance(flag, bool) and self.cfg.get("tokenizer_class") in LLAMA_TOKENIZER_CLASSES:
            return flag
        token = _token_content(self.cfg.get(f"{kind}_token"))
        from_template = _post_template_adds(self.tok.get("post_processor"), kind, token)
        if from_template is not None:
            return from_template
        return flag if isinstance(flag, bool) else False

    def pre_name(self) -> str:
        if not _normalizer_is_identity(self.tok.get("normalizer")):
            raise ConversionError(f"{self.path}: a text normalizer is not supported by llama.cpp's BPE")
        canonical = _canonical_pre(self.tok.get("pre_tokenizer"))
        name = PRE_TOKENIZERS.get(canonical) if canonical else None
        if name is None:
            raise ConversionError(
                f"{self.path}: unrecognised pre-tokenizer definition; known: {', '.join(sorted(set(PRE_TOKENIZERS.values())))}"
            )
        return name


def _merges(source: _Source) -> list[str]:
    merges = source.model.get("merges") or []
    return [m if isinstance(m, str) else " ".join(m) for m in merges]


def _chat_templates(source: _Source) -> dict[str, str]:
    """`tokenizer.chat_template` (and `.NAME` for named ones) from tokenizer_config or chat_template.jinja."""
    template = source.cfg.get("chat_template")
    if isinstance(template, str):
        return {"tokenizer.chat_template": template}
    if isinstance(template, list):  # [{name, template}, ...]
        return {
            "tokenizer.chat_template" + ("" if t["name"] == "default" else f".{t['name']}"): t["template"]
            for t in template
            if isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("template"), str)
        }
    jinja = source.model_dir / "chat_template.jinja"
    if not jinja.is_file():
        return {}
    try:
        return {"tokenizer.chat_template": jinja.read_text(encoding="utf-8")}
    except (OSError, UnicodeDecodeError) as err:
        raise ConversionError(f"{jinja}: unreadable ({err})") from None


def vocab_metadata(model_dir: Path, vocab_size: int | None) -> dict[str, object]:
    """Every `tokenizer.*` GGUF key for the model in `model_dir`.

    The vocabulary is padded with `[PAD{i}]` tokens (type unused) up to `vocab_size`, the
    config's embedding rows; `None` means no padding.
    """
    model_dir = Path(model_dir)
    source = _Source(model_dir)
    pre = source.pre_name()
    by_id: dict[int, tuple[str, int]] = {i: (text, TOKEN_NORMAL) for text, i in source.model["vocab"].items()}
    for tok in source.added:
        kind = TOKEN_CONTROL if tok.get("special") else TOKEN_USER_DEFINED
        by_id[tok["id"]] = (tok["content"], kind)
    size = max(by_id) + 1
    if vocab_size is not None:
        if vocab_size < size:
            raise ConversionError(
                f"{source.path}: token id {size - 1} does not fit the config's vocab_size {vocab_size}"
            )
        size = vocab_size
    tokens: list[str] = []
    types: list[int] = []
    for i in range(size):
        text, kind = by_id.get(i, (f"[PAD{i}]", TOKEN_UNUSED))
        tokens.append(text)
        types.append(kind)

    meta: dict[str, object] = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": _merges(source),
    }
    for kind, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unk", "unknown_token_id"),
                      ("pad", "padding_token_id")):
        token_id = source.token_id(kind)
        if token_id is not None:
            if not 0 <= token_id < size:
                raise ConversionError(f"{source.model_dir / 'config.json'}: {kind}_token_id {token_id} is not a "
                                      f"token id (the vocabulary has {size})")
            meta[f"tokenizer.ggml.{key}"] = token_id
    meta["tokenizer.ggml.add_bos_token"] = source.adds("bos")
    meta["tokenizer.ggml.add_eos_token"] = source.adds("eos")
    meta.update(_chat_templates(source))
    return meta


def reference_ids(model_dir: Path, text: str) -> list[int]:
    """The ids the source tokenizer gives for `text`, with BOS/EOS as the model expects them."""
    source, tokenizer = _loaded(*_stamp(Path(model_dir)))
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    if source.adds("bos") and (bos := source.token_id("bos")) is not None:
        ids = [bos, *ids]
    if source.adds("eos") and (eos := source.token_id("eos")) is not None:
        ids = [*ids, eos]
    return ids


def _stamp(model_dir: Path) -> tuple[str, tuple[int, ...]]:
    """The folder plus its tokenizer files' change times, so the cache below never serves stale files."""
    names = ("tokenizer.json", "tokenizer_config.json", "config.json")
    return str(model_dir), tuple((model_dir / n).stat().st_mtime_ns if (model_dir / n).exists() else -1 for n in names)


@functools.lru_cache(maxsize=4)
def _loaded(model_dir: str, _mtimes: tuple[int, ...]):
    from tokenizers import Tokenizer

    source = _Source(Path(model_dir))
    try:
        tokenizer = Tokenizer.from_str(json.dumps(source.tok))
    except Exception as err:  # tokenizers raises a bare Exception on a malformed definition
        raise ConversionError(f"{source.path}: the tokenizers library cannot load it ({err})") from None
    return source, tokenizer
