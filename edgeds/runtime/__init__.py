"""The runtime: llama.cpp through llama-cpp-python, wrapped as an Engine that yields events."""

from edgeds.runtime.engine import Engine
from edgeds.runtime.params import GenerationParams, ModelDefaults

__all__ = ["Engine", "GenerationParams", "ModelDefaults"]
