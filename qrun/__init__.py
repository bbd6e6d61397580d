"""qrun: a quantized, CPU-only local runner for Chinese chat LLMs on llama.cpp."""

__version__ = "0.1.0"
