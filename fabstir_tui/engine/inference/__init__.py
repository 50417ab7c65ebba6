"""llama.cpp inference: GGUF registry, worker processes, and async token streams."""
