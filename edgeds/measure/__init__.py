"""Measuring: `edgeds bench` (against llama.cpp's raw loop) and `edgeds eval` (perplexity, KLD)."""
