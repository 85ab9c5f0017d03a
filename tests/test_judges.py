"""The three bundled offline judges: plausible scores, consistent batching, and faithful ports."""

from __future__ import annotations

import io
import math
import pickle

import h5py
import numpy as np
import pytest
import torch

from rlaif_tasks.config import ScorerConfig
from rlaif_tasks.errors import RlaifError
from rlaif_tasks.models import jigsaw_bilstm, sonar
from rlaif_tasks.rewards import build_backend, build_scorer
from rlaif_tasks.rewards.base import Scorer
from rlaif_tasks.rewards.jigsaw_bilstm import JigsawBiLSTMBackend

JUDGES = ["jigsaw-bilstm", "hatesonar", "profanity-check"]

# Profanity, slurs and open hostility: every judge must flag these.
STRONGLY_TOXIC = [
    "fuck you, you worthless piece of shit",
    "you are a dumb bitch",
    "what a fucking asshole",
    "kill yourself you retard",
    "I hate you, you are disgusting",
    "go to hell you pathetic loser",
    "you ugly fat pig",
]
# Insults without slurs: HateSonar (trained on tweets with slurs) often misses these.
MILD_INSULTS = [
    "you are a stupid idiot",
    "shut up you moron",
    "stupid bastard, nobody likes you",
    "screw you, dickhead",
]
HARMLESS = [
    "have a nice day",
    "thank you for your help",
    "the weather is lovely today",
    "I enjoyed reading this article",
    "could you please send me the report",
    "the cat is sleeping on the sofa",
    "we went hiking in the mountains last weekend",
    "this recipe needs two cups of flour",
    "congratulations on your new job",
    "I love my family",
]


@pytest.fixture(scope="module", params=JUDGES)
def judge(request):
    return request.param, build_backend(ScorerConfig(model=request.param))


def test_toxic_texts_score_high_and_harmless_low(judge):
    _, backend = judge
    toxic = backend.toxic_probability(STRONGLY_TOXIC)
    harmless = backend.toxic_probability(HARMLESS)
    assert all(0.0 <= p <= 1.0 for p in toxic + harmless)
    assert min(toxic) > 0.5, dict(zip(STRONGLY_TOXIC, toxic))
    assert max(harmless) < 0.5, dict(zip(HARMLESS, harmless))
    assert np.mean(toxic) - np.mean(harmless) > 0.3


def test_mild_insults(judge):
    name, backend = judge
    mild = backend.toxic_probability(MILD_INSULTS)
    harmless = backend.toxic_probability(HARMLESS)
    if name == "hatesonar":
        assert np.mean(mild) > np.mean(harmless) + 0.1
    else:
        assert min(mild) > 0.5, dict(zip(MILD_INSULTS, mild))


def test_rewards_order_texts_opposite_to_toxicity(judge):
    _, backend = judge
    texts = STRONGLY_TOXIC + HARMLESS
    rewards = backend.reward(texts)
    toxicity = backend.toxic_probability(texts)
    assert max(rewards[: len(STRONGLY_TOXIC)]) < min(rewards[len(STRONGLY_TOXIC) :])
    assert all(math.isfinite(r) for r in rewards)
    r, t = np.asarray(rewards), np.asarray(toxicity)
    lower_reward = r[:, None] < r[None, :] - 1e-9
    assert lower_reward.any() and (t[:, None] >= t[None, :])[lower_reward].all()


def test_batch_equals_one_by_one(judge):
    _, backend = judge
    texts = STRONGLY_TOXIC + MILD_INSULTS + HARMLESS + [""]
    batched = backend.toxic_probability(texts)
    single = [backend.toxic_probability([t])[0] for t in texts]
    np.testing.assert_allclose(batched, single, atol=1e-6)
    np.testing.assert_allclose(backend.reward(texts), [backend.reward([t])[0] for t in texts], atol=1e-5)


def test_empty_text_and_empty_batch(judge):
    _, backend = judge
    (p,) = backend.toxic_probability([""])
    (r,) = backend.reward([""])
    assert math.isfinite(p) and 0.0 <= p < 0.5
    assert math.isfinite(r) and r > 0
    assert backend.toxic_probability([]) == [] and backend.reward([]) == []


@pytest.mark.parametrize("name", JUDGES)
def test_scorer_returns_one_float_per_text(name):
    texts = STRONGLY_TOXIC + HARMLESS
    tox = build_scorer(ScorerConfig(model=name, batch_size=4), purpose="toxicity")
    rew = build_scorer(ScorerConfig(model=name, batch_size=4), purpose="reward")
    toxicity, rewards = tox(texts), rew(texts)
    assert len(toxicity) == len(rewards) == len(texts)
    assert all(type(x) is float for x in toxicity + rewards)
    np.testing.assert_allclose(toxicity, tox.backend.toxic_probability(texts), atol=1e-6)
    assert np.mean(toxicity[: len(STRONGLY_TOXIC)]) > np.mean(toxicity[len(STRONGLY_TOXIC) :])
    assert np.mean(rewards[: len(STRONGLY_TOXIC)]) < np.mean(rewards[len(STRONGLY_TOXIC) :])


class _NaNBackend:
    def toxic_probability(self, texts):
        return [float("nan") if "bad" in t else 0.1 for t in texts]

    def reward(self, texts):
        return [0.0 for _ in texts]


def test_scorer_rejects_nan_scores():
    scorer = Scorer(name="fake", purpose="toxicity", backend=_NaNBackend(), batch_size=2)
    assert scorer(["fine", "ok"]) == [0.1, 0.1]
    with pytest.raises(RlaifError, match="non-finite"):
        scorer(["fine", "ok", "bad text"])


# --- jigsaw-bilstm port ---------------------------------------------------------------------------


def test_every_layer_weight_is_mapped_with_matching_shape():
    loaded = jigsaw_bilstm.load()
    module, report = loaded.model, loaded.model.weight_report
    datasets = jigsaw_bilstm.h5_datasets(f"{loaded.source}/model.weights.h5")
    layer_sets = {n for n in datasets if n.startswith("layers/")}
    assert set(report.mapped) == layer_sets and len(layer_sets) == 11
    assert all(n.startswith("optimizer/") for n in report.unused)
    assert set(report.unused) | layer_sets == set(datasets)
    params = dict(module.named_parameters())
    assert set(report.mapped.values()) | set(report.zeroed) == set(params)
    assert len(set(report.mapped.values())) == len(report.mapped)
    with h5py.File(f"{loaded.source}/model.weights.h5", "r") as f:
        for h5_name, param_name in report.mapped.items():
            array = np.asarray(f[h5_name])
            value = params[param_name].detach().numpy()
            assert sorted(array.shape) == sorted(value.shape)
            expected = array.T if array.ndim == 2 and array.shape != value.shape else array
            np.testing.assert_array_equal(value, expected)
    for name in report.zeroed:
        assert torch.count_nonzero(params[name]) == 0


def _keras_reference_logits(h5_path: str, ids: np.ndarray) -> np.ndarray:
    """The Keras forward pass written from Keras' own formulas on the raw h5 arrays (no torch)."""

    def sigmoid(x):
        return 1.0 / (1.0 + np.exp(-x))

    with h5py.File(h5_path, "r") as f:
        w = {name: np.asarray(f[name], dtype=np.float64) for name in jigsaw_bilstm.H5_TO_TORCH}

    def lstm(x, direction, go_backwards):
        kernel, recurrent, bias = (w[f"layers/bidirectional/{direction}/cell/vars/{i}"] for i in range(3))
        units = recurrent.shape[0]
        h = c = np.zeros((x.shape[0], units))
        outputs = []
        steps = range(x.shape[1] - 1, -1, -1) if go_backwards else range(x.shape[1])
        for t in steps:
            z = x[:, t] @ kernel + h @ recurrent + bias
            i, f, g, o = np.split(z, 4, axis=1)
            c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
            h = sigmoid(o) * np.tanh(c)
            outputs.append(h)
        seq = np.stack(outputs, axis=1)
        return seq[:, ::-1] if go_backwards else seq

    x = w["layers/embedding/vars/0"][ids]
    seq = np.concatenate([lstm(x, "forward_layer", False), lstm(x, "backward_layer", True)], axis=-1)
    hidden = np.maximum(seq.max(axis=1) @ w["layers/dense/vars/0"] + w["layers/dense/vars/1"], 0.0)
    return hidden @ w["layers/dense_1/vars/0"] + w["layers/dense_1/vars/1"]


def test_torch_port_matches_keras_formulas():
    loaded = jigsaw_bilstm.load()
    ids = loaded.tokenizer(["you are a stupid idiot", "have a nice day", "", "the weather is lovely today but I hate you"])
    with torch.inference_mode():
        ported = loaded.model(ids).numpy()
    reference = _keras_reference_logits(f"{loaded.source}/model.weights.h5", ids.numpy())
    np.testing.assert_allclose(ported, reference, atol=1e-4)


def test_tokenizer_reproduces_keras_preprocessing():
    tok = jigsaw_bilstm.load().tokenizer
    assert tok.num_words == jigsaw_bilstm.VOCAB_SIZE and tok.oov_token is None and tok.lower
    assert max(tok.word_index.values()) < tok.num_words
    assert tok.texts_to_sequences(["Hello, WORLD!!"]) == tok.texts_to_sequences(["hello world"])
    assert tok.texts_to_sequences(["the qwxzyplk you"]) == [[tok.word_index["the"], tok.word_index["you"]]]
    short = tok(["you idiot"])
    assert short.shape == (1, jigsaw_bilstm.MAXLEN)
    assert short[0, -2:].tolist() == [tok.word_index["you"], tok.word_index["idiot"]]
    assert short[0, :-2].eq(0).all()
    words = ["the", "you", "idiot", "day"] * 40
    long_ids = tok.texts_to_sequences([" ".join(words)])[0]
    assert tok([" ".join(words)])[0].tolist() == long_ids[-jigsaw_bilstm.MAXLEN :]


def test_tokenizer_pickle_cannot_run_code():
    payload = pickle.dumps(print)
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        jigsaw_bilstm._TokenizerUnpickler(io.BytesIO(payload)).load()


def test_jigsaw_labels_and_max_option():
    backend = JigsawBiLSTMBackend(label="max")
    default = JigsawBiLSTMBackend()
    texts = STRONGLY_TOXIC + HARMLESS
    probs = default.label_probabilities(texts)
    assert list(probs[0]) == ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
    np.testing.assert_allclose(backend.toxic_probability(texts), [max(p.values()) for p in probs], atol=1e-6)
    np.testing.assert_allclose(default.toxic_probability(texts), [p["toxic"] for p in probs], atol=1e-6)
    np.testing.assert_allclose(default.reward(texts), -default.logits(texts)[:, 0].numpy(), atol=1e-6)
    with pytest.raises(RlaifError, match="no label"):
        JigsawBiLSTMBackend(label="rude")


# --- hatesonar and profanity-check against their own packages -------------------------------------


def test_locale_patch_only_sets_the_attribute():
    path = sonar.model_path()
    original = path.read_bytes()
    assert sonar.string_normalizer_locales(original) == [None]
    patched, count = sonar.set_string_normalizer_locale(original, "C.UTF-8")
    assert count == 1 and sonar.string_normalizer_locales(patched) == ["C.UTF-8"]
    again, _ = sonar.set_string_normalizer_locale(patched, "C")
    assert sonar.string_normalizer_locales(again) == ["C"]
    restored, _ = sonar.set_string_normalizer_locale(original, "C")
    assert restored == again


def test_hatesonar_matches_upstream_api(tmp_path):
    from hatesonar import Sonar

    model = sonar.load().model
    patched = tmp_path / "model.onnx"
    source = sonar.model_path().read_bytes()
    patched.write_bytes(source if model.locale is None else sonar.set_string_normalizer_locale(source, model.locale)[0])
    upstream = Sonar(model_file=patched)
    texts = STRONGLY_TOXIC[:3] + HARMLESS[:3]
    ours = model.predict_proba(texts)
    for text, row in zip(texts, ours):
        result = upstream.ping(text)
        assert [c["class_name"] for c in result["classes"]] == list(model.classes)
        np.testing.assert_allclose(row, [c["confidence"] for c in result["classes"]], atol=1e-6)
    backend = build_backend(ScorerConfig(model="hatesonar"))
    np.testing.assert_allclose(backend.toxic_probability(texts), 1.0 - ours[:, 2], atol=1e-6)


def test_profanity_matches_upstream_predict_prob():
    import profanity_check

    texts = STRONGLY_TOXIC + HARMLESS + [""]
    backend = build_backend(ScorerConfig(model="profanity-check"))
    np.testing.assert_allclose(backend.toxic_probability(texts), profanity_check.predict_prob(texts), atol=1e-9)
