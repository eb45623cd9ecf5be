"""`--verify`: does the GGUF, run by llama.cpp, behave like the source checkpoint?

Two checks:
- tokenizer (always): llama.cpp's tokenizer, loaded from the GGUF, against the `tokenizers`
  library on the source's tokenizer.json, over a built-in multilingual text (BOS/EOS as the
  model adds them). A mismatch fails the verification.
- logits (when torch and transformers are installed): llama.cpp's logits for a fixed prompt
  against transformers' float32 logits, reported as the max abs difference and top-1 agreement.
  How close is close enough depends on the outtype, so these are reported, not judged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeds.errors import ConversionError

CHECK_TEXT = (
    "The quick brown fox jumps over the lazy dog. It's 3:45 PM — we've got 1,234,567 reasons (or 3.14159...)!\n"
    "敏捷的棕色狐狸跳过了懒狗。 すばやい茶色の狐がのろまな犬を飛び越える。 빠른 갈색 여우가 게으른 개를 뛰어넘는다.\n"
    "Быстрая бурая лиса перепрыгивает через ленивую собаку. Ο γρήγορος καφέ αλεπού. "
    "الثعلب البني السريع يقفز فوق الكلب الكسول. तेज़ भूरी लोमड़ी आलसी कुत्ते के ऊपर कूदती है।\n"
    "Ça va? Größe, naïve café. 🦊🐕 👍🏽 \t\ttabs   and    spaces\n\n\n"
    "def f(x):\n    return x ** 2  # comment\n<think>\nreasoning\n</think>\n\nanswer"
)
LOGITS_PROMPT = "Solve step by step: what is 17 × 23? 请一步一步地思考。"


@dataclass(frozen=True)
class VerifyReport:
    """What `verify` found. Logit fields are None when torch/transformers are not installed."""

    n_tokens: int
    first_mismatch: int | None  # index of the first differing token id, None when all agree
    max_abs_diff: float | None = None
    top1_agreement: float | None = None
    n_logit_positions: int = 0

    @property
    def tokens_match(self) -> bool:
        return self.first_mismatch is None

    def lines(self) -> list[str]:
        if self.tokens_match:
            out = [f"verify: tokenizer: {self.n_tokens} ids on the check text, all equal to the source tokenizer's"]
        else:
            out = [f"verify: tokenizer: ids differ from the source tokenizer's at position {self.first_mismatch} "
                   f"of {self.n_tokens}"]
        if self.max_abs_diff is None:
            out.append("verify: logits: skipped (install torch and transformers to compare with the source model)")
        else:
            out.append(f"verify: logits: {self.n_logit_positions} positions, max abs diff {self.max_abs_diff:.3g}, "
                       f"top-1 agreement {100 * self.top1_agreement:.1f}%")
        return out

    def raise_if_failed(self, path: Path) -> None:
        if not self.tokens_match:
            raise ConversionError(f"{path}: verification failed: llama.cpp's token ids differ from the source "
                                  f"tokenizer's at position {self.first_mismatch} (the file is kept for inspection)")


def _first_mismatch(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def llama_cpp_ids(gguf_path: Path, text: str) -> list[int]:
    """llama.cpp's ids for `text` from the GGUF's vocabulary alone (BOS/EOS as the file says)."""
    from edgeds.errors import ModelLoadError
    from edgeds.llamacpp.binding import LoadOptions, Model

    try:
        model = Model(gguf_path, LoadOptions(vocab_only=True))
    except ModelLoadError:
        raise ConversionError(f"{gguf_path}: llama.cpp cannot load the vocabulary") from None
    try:
        return model.tokenize(text, add_special=True, parse_special=False)
    finally:
        model.close()


def transformers_logits(folder: Path, ids: list[int]) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()  # not its load report (e.g. the skipped MTP layer) nor progress bars
    logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, trust_remote_code=False).eval()
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def _have_reference() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))


def verify(gguf_path: Path, folder: Path, *, n_threads: int | None = None) -> VerifyReport:
    """Compare the converted GGUF with the source checkpoint in `folder` (see the module docstring)."""
    from edgeds.convert.tokenizer import reference_ids
    from edgeds.llamacpp.logits import all_logits

    expected = reference_ids(folder, CHECK_TEXT)
    got = llama_cpp_ids(gguf_path, CHECK_TEXT)
    mismatch = _first_mismatch(got, expected)
    if not _have_reference():
        return VerifyReport(len(expected), mismatch)
    ids = reference_ids(folder, LOGITS_PROMPT)
    reference = transformers_logits(folder, ids)
    logits = all_logits(gguf_path, ids, n_threads)
    return VerifyReport(
        n_tokens=len(expected),
        first_mismatch=mismatch,
        max_abs_diff=float(np.abs(logits - reference).max()),
        top1_agreement=float((logits.argmax(-1) == reference.argmax(-1)).mean()),
        n_logit_positions=len(ids),
    )
