"""Which file: the model registry, the hub cache, resolving what a user typed to a local GGUF,
and the one GGUF header reader."""
