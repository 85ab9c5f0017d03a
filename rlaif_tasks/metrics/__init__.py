"""Local `evaluate` modules: hub metrics cannot load offline, a folder path can."""

from pathlib import Path

TOXICITY_MODULE = str(Path(__file__).parent / "toxicity")
