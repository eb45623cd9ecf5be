"""LoRA adapters through llama.cpp's C API: load a GGUF adapter onto a `Model`, apply adapters to a `Context`.

`llama_adapter_lora_init` loads the adapter's tensors beside the model's (same devices); the
model owns it from then on and frees it with itself, so `LoraAdapter.close` frees it only while
the model is still loaded. `set_loras` is `llama_set_adapters_lora`: the context multiplies every
adapted weight `W·x + scale·alpha/rank·B·A·x` from its next decode on (scale 0 leaves the adapter out).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path

import llama_cpp

from edgeds.errors import ModelLoadError
from edgeds.llamacpp.backend import captured_llama_log
from edgeds.llamacpp.binding import Context, Model, _last_error


class LoraAdapter:
    """One GGUF LoRA adapter loaded for `model`; `metadata` holds its scalar GGUF keys."""

    def __init__(self, model: Model, path: str | Path):
        self.model = model
        self.path = Path(path)
        with captured_llama_log() as log:
            ptr = llama_cpp.llama_adapter_lora_init(model.ptr, str(self.path).encode())
        if not ptr:
            reason = _last_error(log) or "llama.cpp could not load it"
            raise ModelLoadError(f"{self.path}: {reason}")
        self.ptr = ptr
        self.metadata = self._read_metadata()

    def _read_metadata(self) -> dict[str, str]:
        out: dict[str, str] = {}
        buf = ctypes.create_string_buffer(1 << 12)
        for i in range(llama_cpp.llama_adapter_meta_count(self.ptr)):
            if llama_cpp.llama_adapter_meta_key_by_index(self.ptr, i, buf, len(buf)) < 0:
                continue
            key = buf.value.decode("utf-8", errors="replace")
            if llama_cpp.llama_adapter_meta_val_str_by_index(self.ptr, i, buf, len(buf)) >= 0:
                out[key] = buf.value.decode("utf-8", errors="replace")
        return out

    def close(self) -> None:
        # after Model.close the adapter is already gone with the model
        if getattr(self, "ptr", None) and getattr(self.model, "ptr", None):
            llama_cpp.llama_adapter_lora_free(self.ptr)
        self.ptr = None

    def __del__(self) -> None:
        self.close()


def set_loras(ctx: Context, adapters: Sequence[tuple[LoraAdapter, float]]) -> None:
    """Apply exactly these (adapter, scale) pairs to `ctx` (an empty sequence removes all)."""
    n = len(adapters)
    ptrs = (llama_cpp.llama_adapter_lora_p_ctypes * max(n, 1))(*(a.ptr for a, _ in adapters))
    scales = (ctypes.c_float * max(n, 1))(*(float(s) for _, s in adapters))
    rc = llama_cpp.llama_set_adapters_lora(ctx.ptr, ptrs, n, scales)
    if rc != 0:
        raise RuntimeError(f"llama_set_adapters_lora failed with code {rc}")
