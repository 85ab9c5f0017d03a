"""Alignment runs for language models from AI or human feedback, as plain tested Python stages."""

__version__ = "0.1.0"
