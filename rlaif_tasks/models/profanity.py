"""alt-profanity-check's TF-IDF vectorizer and calibrated linear SVM, loaded from its joblib files.

The files are read directly instead of importing `profanity_check`, which would load them as an import
side effect. They were pickled with scikit-learn 1.9.1, the version this project pins, so sklearn's
InconsistentVersionWarning is not silenced: if it appears, the environment really differs.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import joblib

from rlaif_tasks.errors import RlaifError
from rlaif_tasks.models.base import LoadedModel

SPEC = "profanity-check"
PACKAGE = "profanity_check"


def data_dir() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RlaifError("the profanity-check judge needs the alt-profanity-check package, which is not installed", "pip install alt-profanity-check==1.9.1")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    for name in ("vectorizer.joblib", "model.joblib"):
        if not (folder / name).is_file():
            raise RlaifError(f"{folder / name} is missing", "reinstall: pip install --force-reinstall alt-profanity-check==1.9.1")
    return folder


@functools.cache
def load() -> LoadedModel:
    """`model` is the calibrated classifier, `tokenizer` the TF-IDF vectorizer that feeds it; once per process."""
    folder = data_dir()
    try:
        vectorizer = joblib.load(folder / "vectorizer.joblib")
        classifier = joblib.load(folder / "model.joblib")
    except (AttributeError, ModuleNotFoundError, ValueError) as exc:
        raise RlaifError(
            f"the profanity-check model in {folder} cannot be unpickled by this scikit-learn: {exc}",
            "install the scikit-learn version it was saved with (1.9.1) or a matching alt-profanity-check release",
        ) from exc
    if 1 not in getattr(classifier, "classes_", ()):
        raise RlaifError(f"{folder / 'model.joblib'} has no 'profane' class 1", "reinstall alt-profanity-check==1.9.1")
    return LoadedModel(spec=SPEC, kind="sklearn-classifier", model=classifier, tokenizer=vectorizer, source=str(folder))
