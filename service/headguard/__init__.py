"""headguard: an inference-time guard against backdoored language models."""

__version__ = "0.1.0"
