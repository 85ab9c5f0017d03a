"""The Jigsaw BiLSTM toxicity classifier of `toxic-comment-classifier`, run in PyTorch without TensorFlow.

The package ships Keras 3 weights (`model.weights.h5`) and a pickled Keras `Tokenizer`; its own code
imports TensorFlow, which this project does not install. So the architecture of its `model.py` is
rebuilt as a `torch.nn.Module`, the weights are read with h5py, and the tokenizer is unpickled into a
small stand-in that reproduces Keras' `texts_to_sequences` and `pad_sequences`.
"""

from __future__ import annotations

import functools
import importlib.util
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np
import torch
from torch import nn

from rlaif_tasks.errors import RlaifError
from rlaif_tasks.models.base import LoadedModel

SPEC = "jigsaw-bilstm"
PACKAGE = "toxic_classifier"
LABELS: tuple[str, ...] = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
"""Output order, as `LIST_CLASSES` in the package's model.py."""
MAXLEN = 100
VOCAB_SIZE = 20000
EMBEDDING_DIM = 50
LSTM_UNITS = 50
HIDDEN_UNITS = 50


class BiLSTMToxicity(nn.Module):
    """Embedding -> BiLSTM(50, sequences) -> global max pool -> Dense(50, relu) -> Dense(6) logits.

    Keras' padding token 0 has no mask there (no `mask_zero`), so the LSTM runs over padding too;
    this module does the same and returns pre-sigmoid logits.
    """

    labels = LABELS
    weight_report: WeightReport | None = None
    """Filled by `load()`: which h5 dataset went where."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB_SIZE, EMBEDDING_DIM)
        self.lstm = nn.LSTM(EMBEDDING_DIM, LSTM_UNITS, batch_first=True, bidirectional=True)
        self.hidden = nn.Linear(2 * LSTM_UNITS, HIDDEN_UNITS)
        self.out = nn.Linear(HIDDEN_UNITS, len(LABELS))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        states, _ = self.lstm(self.embedding(ids))
        pooled = states.amax(dim=1)
        return self.out(torch.relu(self.hidden(pooled)))


def _lstm_tensors(direction: str, suffix: str) -> dict[str, tuple[str, bool]]:
    # Keras and PyTorch share the i, f, c(g), o gate order, so only a transpose is needed.
    cell = f"layers/bidirectional/{direction}/cell/vars"
    return {
        f"{cell}/0": (f"lstm.weight_ih_l0{suffix}", True),
        f"{cell}/1": (f"lstm.weight_hh_l0{suffix}", True),
        f"{cell}/2": (f"lstm.bias_ih_l0{suffix}", False),
    }


H5_TO_TORCH: dict[str, tuple[str, bool]] = {
    "layers/embedding/vars/0": ("embedding.weight", False),
    **_lstm_tensors("forward_layer", ""),
    **_lstm_tensors("backward_layer", "_reverse"),
    "layers/dense/vars/0": ("hidden.weight", True),
    "layers/dense/vars/1": ("hidden.bias", False),
    "layers/dense_1/vars/0": ("out.weight", True),
    "layers/dense_1/vars/1": ("out.bias", False),
}
"""h5 dataset -> (parameter name, transpose?). Keras Dense/LSTM kernels are (in, out), torch's (out, in)."""

ZEROED = ("lstm.bias_hh_l0", "lstm.bias_hh_l0_reverse")
"""Keras keeps one bias per LSTM; torch adds bias_ih and bias_hh, so the second one is zero."""


@dataclass
class WeightReport:
    """What the h5 -> torch mapping did, so a test can prove nothing was dropped or guessed."""

    mapped: dict[str, str]
    """h5 dataset -> torch parameter it filled."""
    unused: list[str]
    """h5 datasets outside `layers/` that were not read (the Adam optimizer state)."""
    zeroed: list[str]


def h5_datasets(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Every dataset in an h5 file with its shape."""
    found: dict[str, tuple[int, ...]] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: found.__setitem__(name, obj.shape) if isinstance(obj, h5py.Dataset) else None)
    return found


def load_keras_weights(module: BiLSTMToxicity, path: str | Path) -> WeightReport:
    """Copy the Keras weights into `module`, failing on any shape mismatch, missing or extra layer weight."""
    params = dict(module.named_parameters())
    datasets = h5_datasets(path)
    layer_sets = {name for name in datasets if name.startswith("layers/")}
    if layer_sets != set(H5_TO_TORCH):
        raise RlaifError(
            f"{path} does not hold the expected BiLSTM weights (missing: {sorted(set(H5_TO_TORCH) - layer_sets)}, "
            f"unexpected: {sorted(layer_sets - set(H5_TO_TORCH))})",
            "reinstall toxic-comment-classifier 0.3.0 (pip install --no-deps --force-reinstall toxic-comment-classifier==0.3.0)",
        )
    filled: dict[str, str] = {}
    with h5py.File(path, "r") as f, torch.no_grad():
        for h5_name, (param_name, transpose) in H5_TO_TORCH.items():
            array = np.asarray(f[h5_name], dtype=np.float32)
            value = torch.from_numpy(array.T.copy() if transpose else array)
            target = params[param_name]
            if value.shape != target.shape:
                raise RlaifError(
                    f"weight {h5_name} has shape {tuple(value.shape)} but {param_name} needs {tuple(target.shape)}",
                    "reinstall toxic-comment-classifier 0.3.0; other versions have a different architecture",
                )
            target.copy_(value)
            filled[h5_name] = param_name
        for name in ZEROED:
            params[name].zero_()
    untouched = set(params) - set(filled.values()) - set(ZEROED)
    if untouched:
        raise RlaifError(f"parameters {sorted(untouched)} got no weights", "this is a bug in the port; report it")
    unused = sorted(set(datasets) - layer_sets)
    return WeightReport(mapped=filled, unused=unused, zeroed=list(ZEROED))


@dataclass
class KerasTokenizer:
    """The parts of `keras...text.Tokenizer` needed to turn text into ids, restored from its pickle."""

    word_index: dict[str, int] = field(default_factory=dict)
    num_words: int | None = None
    oov_token: str | None = None
    lower: bool = True
    filters: str = '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n'
    split: str = " "
    char_level: bool = False
    maxlen: int = MAXLEN

    def __setstate__(self, state: dict[str, Any]) -> None:
        # The pickle also holds word counts and document statistics (~200k entries each) that
        # inference never reads; ids >= num_words are dropped by Keras, so they are pruned too.
        self.__init__(
            num_words=state.get("num_words"),
            oov_token=state.get("oov_token"),
            lower=state.get("lower", True),
            filters=state.get("filters", ""),
            split=state.get("split", " "),
            char_level=state.get("char_level", False),
        )
        limit = self.num_words
        self.word_index = {w: i for w, i in state["word_index"].items() if limit is None or i < limit or w == self.oov_token}

    def words(self, text: str) -> list[str]:
        """Keras' `text_to_word_sequence`: lowercase, filter characters become separators, split."""
        if self.lower:
            text = text.lower()
        if self.char_level:
            return list(text)
        text = text.translate(str.maketrans({c: self.split for c in self.filters}))
        return [w for w in text.split(self.split) if w]

    def texts_to_sequences(self, texts: Sequence[str]) -> list[list[int]]:
        oov_index = self.word_index.get(self.oov_token) if self.oov_token is not None else None
        sequences = []
        for text in texts:
            ids = []
            for word in self.words(text):
                index = self.word_index.get(word)
                if index is not None and (self.num_words is None or index < self.num_words):
                    ids.append(index)
                elif oov_index is not None:
                    ids.append(oov_index)
            sequences.append(ids)
        return sequences

    def pad(self, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        """Keras' `pad_sequences` defaults: zeros in front, and long texts keep their *last* maxlen ids."""
        out = torch.zeros(len(sequences), self.maxlen, dtype=torch.long)
        for row, ids in enumerate(sequences):
            kept = list(ids)[-self.maxlen :]
            if kept:
                out[row, self.maxlen - len(kept) :] = torch.tensor(kept, dtype=torch.long)
        return out

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        return self.pad(self.texts_to_sequences(texts))


class _TokenizerUnpickler(pickle.Unpickler):
    """Resolves the Keras Tokenizer to `KerasTokenizer` and refuses every other class, so the pickle can run no code."""

    ALLOWED = {("collections", "OrderedDict"), ("collections", "defaultdict"), ("builtins", "int"), ("builtins", "list")}

    def find_class(self, module: str, name: str) -> Any:
        if name == "Tokenizer" and module.startswith(("keras", "tensorflow", "keras_preprocessing")):
            return KerasTokenizer
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"tokenizer pickle refers to {module}.{name}, which is not allowed")


def load_tokenizer(path: str | Path) -> KerasTokenizer:
    with open(path, "rb") as handle:
        tokenizer = _TokenizerUnpickler(handle).load()
    if not isinstance(tokenizer, KerasTokenizer):
        raise RlaifError(f"{path} does not hold a Keras Tokenizer", "reinstall toxic-comment-classifier 0.3.0")
    return tokenizer


def asset_dir() -> Path:
    """The package's `model/` folder, found without importing the package (its __init__ imports TensorFlow)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RlaifError(
            "the jigsaw-bilstm judge needs the toxic-comment-classifier package, which is not installed",
            "pip install --no-deps toxic-comment-classifier==0.3.0 (--no-deps: its TensorFlow dependency is not needed)",
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    for name in ("model.weights.h5", "tokenizer.pickle"):
        if not (folder / name).is_file():
            raise RlaifError(f"{folder / name} is missing", "reinstall: pip install --no-deps --force-reinstall toxic-comment-classifier==0.3.0")
    return folder


@functools.cache
def load() -> LoadedModel:
    """The ported classifier (eval mode) and tokenizer; loaded once per process."""
    folder = asset_dir()
    module = BiLSTMToxicity()
    module.weight_report = load_keras_weights(module, folder / "model.weights.h5")
    module.eval().requires_grad_(False)
    return LoadedModel(spec=SPEC, kind="bilstm-classifier", model=module, tokenizer=load_tokenizer(folder / "tokenizer.pickle"), source=str(folder))
