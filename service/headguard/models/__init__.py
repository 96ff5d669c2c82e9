"""Model loading: base checkpoints from registry packages, local Hugging Face folders."""
