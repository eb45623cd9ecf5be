"""This machine and what fits on it: hardware, the one memory model, fit verdicts and the
placement plan (which tensors go to the GPU)."""
