"""Model loaders: GGUF files, Hugging Face checkpoint directories, seeded random weights."""
