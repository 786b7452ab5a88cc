"""Text generation: decoding parameters (params), the transformers and vLLM backends, and the one
function that picks and builds a backend from the config (backend.make_generator)."""
