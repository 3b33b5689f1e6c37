"""How SAM is tuned: SVD-scaled layers, LoRA and other methods, adapter files, the SVD cache."""
