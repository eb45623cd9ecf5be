"""edgeds: DeepSeek-R1 distills and DeepSeek MoE models on edge hardware, through llama.cpp."""

__version__ = "0.1.0"
