"""Quality of a quantized model against a reference: perplexity and KL divergence.

llama-perplexity's `--kl-divergence` idea with edgeds' low-level runtime: the text is tokenized
once, cut into chunks of `n_ctx` tokens, and both models decode the same chunks with logits at every
position. The second half of each chunk is scored (the first half is context): the model's
perplexity, the mean per-token KL(ref || model) of the next-token distributions, its 99th
percentile, and how often both models' top-1 tokens agree.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from edgeds.errors import EdgedsError


@dataclass(frozen=True)
class EvalResult:
    n_tokens: int        # scored tokens
    ppl: float           # the model's perplexity on the scored tokens
    ref_ppl: float       # the reference's
    kld_mean: float      # mean KL(ref || model), nats per token
    kld_p99: float
    top1_agree: float    # fraction of positions where both argmaxes agree
    model_bytes: int
    ref_bytes: int

    def lines(self) -> list[str]:
        return [
            f"tokens scored   {self.n_tokens}",
            f"size            {self.model_bytes / 2**20:.2f} MiB (reference {self.ref_bytes / 2**20:.2f} MiB)",
            f"perplexity      {self.ppl:.4f} (reference {self.ref_ppl:.4f})",
            f"KLD mean        {self.kld_mean:.6f}",
            f"KLD p99         {self.kld_p99:.6f}",
            f"top-1 agreement {self.top1_agree * 100:.2f}%",
        ]


def _file_bytes(path: Path) -> int:
    from edgeds.catalog.gguf import split_parts

    return sum(p.stat().st_size for p in split_parts(path))


def _chunk_logprobs(ctx, model, tokens, first: int):
    """Log-softmax rows for positions first..len-2 (predicting tokens first+1..)."""
    import numpy as np

    ctx.clear()
    ctx.decode([(t, i, 0, i >= first and i < len(tokens) - 1) for i, t in enumerate(tokens)])
    rows = []
    for i in range(first, len(tokens) - 1):
        row = np.ctypeslib.as_array(ctx.logits(i), shape=(model.n_vocab,)).astype(np.float64)
        row -= row.max()
        row -= math.log(np.exp(row).sum())
        rows.append(row)
    return np.stack(rows)


def evaluate(model_path: str | os.PathLike[str], ref_path: str | os.PathLike[str], text: str, *,
             n_ctx: int = 256, max_chunks: int | None = None, n_threads: int | None = None) -> EvalResult:
    """Perplexity of `model_path` and KL divergence of its distributions from `ref_path`'s on `text`."""
    import numpy as np

    from edgeds.catalog.gguf import read_gguf
    from edgeds.llamacpp.binding import Context, LoadOptions, Model

    model_path, ref_path = Path(model_path), Path(ref_path)
    for p in (model_path, ref_path):
        if not p.is_file():
            raise EdgedsError(f"{p}: no such file")
        read_gguf(p)  # a header llama.cpp would abort on fails here, with one line
    if n_ctx < 16:
        raise EdgedsError(f"--n-ctx {n_ctx}: use at least 16 tokens per chunk")
    ref = Model(ref_path, LoadOptions())
    tokens = ref.tokenize(text, add_special=False, parse_special=False)
    n_chunks = len(tokens) // n_ctx
    if max_chunks:
        n_chunks = min(n_chunks, max_chunks)
    if n_chunks < 1:
        raise EdgedsError(f"the text has {len(tokens)} tokens; it needs at least {n_ctx} (one chunk of --n-ctx)")
    first = n_ctx // 2
    chunks = [tokens[i * n_ctx:(i + 1) * n_ctx] for i in range(n_chunks)]

    ref_ctx = Context(ref, n_ctx=n_ctx, n_batch=n_ctx, n_threads=n_threads)
    ref_rows = [_chunk_logprobs(ref_ctx, ref, c, first) for c in chunks]
    ref_ctx.close()
    n_vocab = ref.n_vocab
    del ref

    model = Model(model_path, LoadOptions())
    if model.n_vocab != n_vocab:
        raise EdgedsError(f"{model_path}: vocabulary of {model.n_vocab} tokens differs from the reference's {n_vocab}")
    ctx = Context(model, n_ctx=n_ctx, n_batch=n_ctx, n_threads=n_threads)
    nll = ref_nll = 0.0
    klds, agree, count = [], 0, 0
    for chunk, ref_lp in zip(chunks, ref_rows):
        lp = _chunk_logprobs(ctx, model, chunk, first)
        targets = np.asarray(chunk[first + 1:])
        idx = np.arange(len(targets))
        nll -= lp[idx, targets].sum()
        ref_nll -= ref_lp[idx, targets].sum()
        klds.append((np.exp(ref_lp) * (ref_lp - lp)).sum(axis=1))
        agree += int((lp.argmax(axis=1) == ref_lp.argmax(axis=1)).sum())
        count += len(targets)
    ctx.close()
    kld = np.concatenate(klds)
    return EvalResult(count, math.exp(nll / count), math.exp(ref_nll / count), float(kld.mean()),
                      float(np.percentile(kld, 99)), agree / count, _file_bytes(model_path), _file_bytes(ref_path))
