"""Held-out evaluation of a policy, and the statistics the gate decides with.

    toxicity.py   generate for the test prompts, score with every judge, compare two evaluations
    quality.py    fluency (perplexity), diversity, repetition, relevance of the responses
    kl.py         KL of a trained policy to the base on its own sampled tokens
    stats.py      paired bootstrap, per-prompt means, sampling seeds
    rtp.py        RealToxicityPrompts' expected maximum toxicity and toxicity probability, paired
    runner.py     evaluate a configured policy in a run folder (what the stages and the gate call)

Importing the package loads nothing heavy; each module imports what it needs.
"""

from pathlib import Path

TOXICITY_MODULE = str(Path(__file__).parent / "toxicity_metric")
"""A local `evaluate` measurement folder (`evaluate.load(TOXICITY_MODULE)`): hub metrics cannot load offline, a folder can."""
