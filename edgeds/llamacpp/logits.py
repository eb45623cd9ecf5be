"""llama.cpp's logits at every position of a token sequence, for comparing a GGUF with a reference.

The KV cache is F32 (llama.cpp's default is F16), so the logits differ from a float32 reference
only by the weights: what `edgeds convert --verify` and the parity tests measure.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import llama_cpp
import numpy as np

from edgeds.llamacpp.backend import captured_llama_log


def all_logits(path: str | os.PathLike[str], ids: Sequence[int], n_threads: int | None = None) -> np.ndarray:
    """The (len(ids), n_vocab) float32 logits of the GGUF at `path` for `ids`, decoded as one batch."""
    with captured_llama_log():  # llama.cpp's loader and context log is not for the terminal
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=max(64, len(ids) + 8), n_batch=max(64, len(ids)),
                              logits_all=True, n_threads=n_threads, verbose=False,
                              type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
        try:
            llm.eval(ids)
            return np.array(llm.scores[: len(ids)], dtype=np.float32)
        finally:
            llm.close()


def adapter_logits(path: str | os.PathLike[str], ids: Sequence[int], loras: Sequence[tuple[str | os.PathLike[str], float]],
                   n_threads: int | None = None) -> np.ndarray:
    """As `all_logits`, with GGUF LoRA adapters (path, scale) loaded at run time (edgeds.llamacpp.lora)."""
    from edgeds.llamacpp.binding import Context, LoadOptions, Model
    from edgeds.llamacpp.lora import LoraAdapter, set_loras

    with captured_llama_log():
        model = Model(path, LoadOptions(n_gpu_layers=0))
        try:
            adapters = [(LoraAdapter(model, p), scale) for p, scale in loras]
            ctx = Context(model, n_ctx=max(64, len(ids) + 8), n_batch=max(64, len(ids)), n_threads=n_threads,
                          f32_attention=True)
            try:
                set_loras(ctx, adapters)
                ctx.decode([(token, pos, 0, True) for pos, token in enumerate(ids)])
                return np.array([np.ctypeslib.as_array(ctx.logits(i), shape=(model.n_vocab,)) for i in range(len(ids))],
                                dtype=np.float32)
            finally:
                ctx.close()
        finally:
            model.close()
