"""Measuring: `edgeds bench` (against llama.cpp's raw loop), `edgeds eval` (perplexity, KLD) and
`edgeds imatrix` (importance matrices, and the imatrix files `quantize --imatrix` reads)."""
