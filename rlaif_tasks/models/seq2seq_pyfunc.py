"""A seq2seq (T5-style) policy as an MLflow pyfunc model: how the registry stores one.

MLflow's transformers flavour logs a pipeline, and transformers 5 has no text2text pipeline, so a
seq2seq policy cannot be logged like a causal one. This model keeps the policy's save_pretrained
folder as its artifact `policy` and answers a list of prompts with generated continuations, as the
causal policies' text-generation pipeline does; its model_config holds the run's sampling, which a
request's params override.

The registry logs this file as code (MLflow's models from code), so loading or serving the model
needs only the pinned runtime packages: nothing here imports rlaif_tasks.
"""

from __future__ import annotations

from mlflow.pyfunc import PythonModel

import mlflow

ARTIFACT = "policy"
"""The key (and folder name) the registry logs the save_pretrained folder under: registry.ARTIFACT_NAME."""
SAMPLING_ONLY = ("temperature", "top_k", "top_p")
"""Settings that mean nothing under greedy decoding: dropped then, so transformers does not warn on every request."""


class Seq2SeqPolicy(PythonModel):
    def load_context(self, context):
        import torch
        import transformers

        folder = context.artifacts[ARTIFACT]
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        self.model = transformers.AutoModelForSeq2SeqLM.from_pretrained(folder)
        self.model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
        self.defaults = dict(context.model_config or {})

    def predict(self, context, model_input, params=None):
        """The continuations of the prompts, one string each.

        No type hints: MLflow would build the signature from them and drop the params of the logged one.
        """
        import torch

        prompts = prompts_of(model_input)
        if not prompts:
            return []
        settings = {**self.defaults, **(params or {})}
        if not settings.get("do_sample"):
            settings = {k: v for k, v in settings.items() if k not in SAMPLING_ONLY}
        batch = self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.model.device)
        with torch.inference_mode():
            out = self.model.generate(**batch, **settings)
        return self.tokenizer.batch_decode(out, skip_special_tokens=True)


def prompts_of(model_input) -> list[str]:
    """The prompts in what pyfunc hands over: a DataFrame (its first column), a Series, a list or one string."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        model_input = model_input.iloc[:, 0]
    if isinstance(model_input, str):
        return [model_input]
    return [str(prompt) for prompt in model_input]


mlflow.models.set_model(Seq2SeqPolicy())
