"""llama.cpp's eval callback (`llama_context_params.cb_eval`): the graph's tensors as they are computed.

The scheduler first asks the callback about each node ("ask"), then, for the nodes it said yes to,
computes the graph up to that node and calls it again with the result ("data"). `WeightTap` says
yes to the matrix multiplications by a model weight (`mul_mat`, and `mul_mat_id` for routed
experts) and hands each one's input activations to a Python function as a numpy array: what
`edgeds imatrix` accumulates.

`GgmlTensor` mirrors `struct ggml_tensor` of the ggml that llama-cpp-python 0.3.36 vendors
(ggml/include/ggml.h); the op and type codes are that header's enum values. Both are checked
against the loaded library (its tensor overhead and op names) before the first use, so a
llama-cpp-python with another layout fails with a message instead of reading garbage.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import llama_cpp
import numpy as np

from edgeds.errors import EdgedsError
from edgeds.llamacpp.devices import _lib

MAX_DIMS, MAX_SRC, MAX_NAME, MAX_OP_PARAMS = 4, 10, 64, 64  # GGML_MAX_*
OBJECT_SIZE = 32  # sizeof(struct ggml_object), which ggml_tensor_overhead() adds to the tensor's size
OP_MUL_MAT, OP_MUL_MAT_ID = 29, 30  # enum ggml_op
OP_NAMES = {OP_MUL_MAT: b"MUL_MAT", OP_MUL_MAT_ID: b"MUL_MAT_ID"}
TYPE_I32 = 26  # enum ggml_type
ACTIVATION_DTYPES = {0: np.float32, 1: np.float16}  # the input types read: F32, F16


class GgmlTensor(ctypes.Structure):
    """`struct ggml_tensor` (ggml.h)."""


GgmlTensor._fields_ = [
    ("type", ctypes.c_int),
    ("buffer", ctypes.c_void_p),
    ("ne", ctypes.c_int64 * MAX_DIMS),   # elements per dimension, innermost first
    ("nb", ctypes.c_size_t * MAX_DIMS),  # strides in bytes
    ("op", ctypes.c_int),
    ("op_params", ctypes.c_int32 * (MAX_OP_PARAMS // 4)),
    ("flags", ctypes.c_int32),
    ("src", ctypes.POINTER(GgmlTensor) * MAX_SRC),
    ("view_src", ctypes.POINTER(GgmlTensor)),
    ("view_offs", ctypes.c_size_t),
    ("data", ctypes.c_void_p),
    ("name", ctypes.c_char * MAX_NAME),
    ("extra", ctypes.c_void_p),
    ("padding", ctypes.c_char * 8),
]
_OP_OFFSET = GgmlTensor.op.offset


@lru_cache(maxsize=1)
def _ggml_base() -> ctypes.CDLL:
    """libggml-base with the functions used here, after checking the struct and enum against it."""
    base = _lib("libggml-base")
    base.ggml_tensor_overhead.restype = ctypes.c_size_t
    base.ggml_op_name.restype = ctypes.c_char_p
    base.ggml_op_name.argtypes = [ctypes.c_int]
    base.ggml_nbytes.restype = ctypes.c_size_t
    base.ggml_nbytes.argtypes = [ctypes.c_void_p]
    base.ggml_backend_buffer_is_host.restype = ctypes.c_bool
    base.ggml_backend_buffer_is_host.argtypes = [ctypes.c_void_p]
    base.ggml_backend_tensor_get.restype = None
    base.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    overhead = base.ggml_tensor_overhead()
    if overhead != OBJECT_SIZE + ctypes.sizeof(GgmlTensor) or any(
            base.ggml_op_name(op) != name for op, name in OP_NAMES.items()):
        raise EdgedsError(f"llama-cpp-python {llama_cpp.__version__}: its ggml_tensor or ggml_op differs from the "
                          "one edgeds reads (ggml of llama-cpp-python 0.3.36); install that version for edgeds imatrix")
    return base


@dataclass(frozen=True)
class WeightProduct:
    """One multiplication of a model weight by activations, seen from the eval callback.

    `inputs` and `expert_ids` are valid only during the call they are handed to (they may view
    llama.cpp's memory); copy what must outlive it.
    """

    weight: str                   # the weight tensor's name, e.g. blk.0.attn_q.weight
    weight_shape: tuple[int, ...]  # ne of the weight, innermost first: (n_in, n_out, matrices, ...)
    inputs: np.ndarray            # src1 as (ne3, ne2, ne1, ne0): rows of n_in = ne0 values
    expert_ids: np.ndarray | None  # mul_mat_id only: (n_tokens, n_used) int32, the expert of each slot


def _strided(t: GgmlTensor, dtype) -> np.ndarray:
    """A tensor's data as a numpy array (ne3, ne2, ne1, ne0) over its byte strides: a view of
    host memory, or a copy fetched from a device buffer."""
    base = _ggml_base()
    address = ctypes.addressof(t)
    n_bytes = base.ggml_nbytes(address)
    if not t.buffer or base.ggml_backend_buffer_is_host(t.buffer):
        buffer = (ctypes.c_char * n_bytes).from_address(t.data)
    else:
        buffer = ctypes.create_string_buffer(n_bytes)
        base.ggml_backend_tensor_get(address, buffer, 0, n_bytes)
    return np.ndarray(tuple(reversed(t.ne)), dtype=dtype, buffer=buffer, strides=tuple(reversed(t.nb)))


class WeightTap:
    """An eval callback that passes every multiplication by a selected model weight to `consume`.

    Set `callback` as the context's `cb_eval` (`edgeds.llamacpp.binding.Context(eval_callback=...)`).
    An exception in `consume` (or a Ctrl-C) stops the graph there; `raise_pending()` re-raises it
    in the caller after llama_decode returns, since ctypes cannot carry it through llama.cpp.
    """

    def __init__(self, consume: Callable[[WeightProduct], None], select: Callable[[str], bool]):
        _ggml_base()
        self._consume, self._select = consume, select
        self._pending: BaseException | None = None
        self.callback = llama_cpp.ggml_backend_sched_eval_callback(self._on_tensor)

    def raise_pending(self) -> None:
        err, self._pending = self._pending, None
        if err is not None:
            raise err

    def _on_tensor(self, address: int, ask: bool, user_data) -> bool:
        if self._pending is not None:
            return False
        try:
            if ask:  # cheap: just the op code, read in place
                return ctypes.c_int.from_address(address + _OP_OFFSET).value in OP_NAMES and self._wanted(address)
            self._consume(self._product(GgmlTensor.from_address(address)))
            return True
        except BaseException as err:  # noqa: BLE001 - re-raised by raise_pending in the caller
            self._pending = err
            return False

    def _wanted(self, address: int) -> bool:
        t = GgmlTensor.from_address(address)
        weight, inputs = t.src[0], t.src[1]
        if not (weight and inputs and self._select(_weight_name(weight.contents))):
            return False
        if inputs.contents.type not in ACTIVATION_DTYPES:  # never skip a selected weight silently
            raise EdgedsError(f"{_weight_name(weight.contents)}: activations of ggml type {inputs.contents.type} "
                              "(edgeds reads F32 and F16 ones)")
        return True

    @staticmethod
    def _product(t: GgmlTensor) -> WeightProduct:
        weight, inputs = t.src[0].contents, t.src[1].contents
        ids = None
        if t.op == OP_MUL_MAT_ID:
            routed = t.src[2].contents
            if routed.type != TYPE_I32:
                raise EdgedsError(f"{_weight_name(weight)}: expert ids of ggml type {routed.type}, expected I32")
            ids = _strided(routed, np.int32)[0, 0]  # (n_tokens, n_used)
        return WeightProduct(_weight_name(weight), tuple(weight.ne), _strided(inputs, ACTIVATION_DTYPES[inputs.type]),
                             ids)


def _weight_name(t: GgmlTensor) -> str:
    """The weight's own name: a device copy is named `CUDA0#blk.0.attn_k.weight#0` (llama-imatrix's
    filter_tensor_name)."""
    name = t.name.decode("utf-8", errors="replace")
    if "#" in name:
        name = name.split("#")[1]
    return name
