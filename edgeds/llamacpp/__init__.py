"""The only code that calls llama.cpp: llama-cpp-python's C bindings (`binding`: Model, Context,
Sampler), the backend and its log (`backend`), a small ctypes extension over the ggml libraries
it ships (`devices`: device list, tensor buffer overrides; `eval_callback`: the graph's weight
multiplications as they run), its quantizer (`quantizer`), LoRA adapters on models and contexts (`lora`) and every-position
logits for parity checks (`logits`)."""
