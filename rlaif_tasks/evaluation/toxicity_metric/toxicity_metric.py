"""Toxicity of generated text under one of the project's judges, as an `evaluate` measurement.

Load it with `evaluate.load(rlaif_tasks.evaluation.TOXICITY_MODULE)`; it works offline, unlike the hub's
`toxicity` measurement, and accepts the same `aggregation` values.
"""

import datasets
import evaluate

_DESCRIPTION = "Probability that each text is toxic, under a bundled or HF classifier judge."
_KWARGS = """
Args:
    predictions (list of str): texts to score.
    judge (str): `jigsaw-bilstm` (default), `hatesonar`, `profanity-check`, or an HF classifier id/folder.
    aggregation (str): None for per-text scores, "maximum" for the highest, "ratio" for the share above threshold.
    threshold (float): what counts as toxic for "ratio" (default 0.5).
Returns:
    {"toxicity": [...]} | {"max_toxicity": float} | {"toxicity_ratio": float}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Toxicity(evaluate.Measurement):
    def _info(self):
        return evaluate.MeasurementInfo(
            module_type="measurement",
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("string", id="sequence")}),
        )

    def _compute(self, predictions, judge="jigsaw-bilstm", aggregation=None, threshold=0.5):
        from rlaif_tasks.config import ScorerConfig
        from rlaif_tasks.rewards import build_scorer

        scores = build_scorer(ScorerConfig(model=judge), purpose="toxicity")(list(predictions))
        if aggregation == "maximum":
            return {"max_toxicity": max(scores)}
        if aggregation == "ratio":
            return {"toxicity_ratio": sum(s >= threshold for s in scores) / len(scores)}
        return {"toxicity": scores}
