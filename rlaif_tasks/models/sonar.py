"""HateSonar's TF-IDF + logistic-regression pipeline (sklearn exported to ONNX), run with onnxruntime.

The graph lower-cases text with a StringNormalizer node whose locale defaults to en_US.UTF-8 on Linux;
minimal images (Docker, CI) often lack that locale and the session fails to build. The `onnx` package
is not a dependency, so when that happens the node's `locale` attribute is set by editing the protobuf
bytes directly (only the ModelProto -> graph -> node -> attribute path is touched). The graph's own
tokenizer keeps only `[a-zA-Z0-9_]+`, so the locale changes nothing for ASCII words.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import onnxruntime as ort

from rlaif_tasks.errors import RlaifError
from rlaif_tasks.models.base import LoadedModel

SPEC = "hatesonar"
PACKAGE = "hatesonar"
CLASSES: tuple[str, ...] = ("hate_speech", "offensive_language", "neither")
"""Class ids 0, 1, 2, as in the package's api.py."""
FALLBACK_LOCALES: tuple[str | None, ...] = (None, "C.UTF-8", "C")
"""None keeps the graph as shipped (the platform default locale)."""

# Field numbers from onnx.proto: ModelProto.graph, GraphProto.node, NodeProto.op_type/attribute,
# AttributeProto.name/s/type and AttributeType.STRING.
_MODEL_GRAPH, _GRAPH_NODE, _NODE_OP_TYPE, _NODE_ATTRIBUTE = 7, 1, 4, 5
_ATTR_NAME, _ATTR_S, _ATTR_TYPE, _ATTR_TYPE_STRING = 1, 4, 20, 3
_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, bytes | None, bytes]]:
    """(field number, payload of a length-delimited field or None, the field's raw bytes) per field."""
    pos = 0
    while pos < len(buf):
        start = pos
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        payload = None
        if wire == _VARINT:
            _, pos = _read_varint(buf, pos)
        elif wire == _LEN:
            size, pos = _read_varint(buf, pos)
            payload, pos = buf[pos : pos + size], pos + size
        elif wire in (_FIXED64, _FIXED32):
            pos += 8 if wire == _FIXED64 else 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, payload, buf[start:pos]


def _len_field(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | _LEN) + _encode_varint(len(payload)) + payload


def _string_attrs(message: bytes) -> dict[int, bytes]:
    return {n: v for n, v, _ in _fields(message) if v is not None}


def _string_normalizers(model: bytes) -> Iterator[bytes]:
    for number, graph, _ in _fields(model):
        if number == _MODEL_GRAPH and graph is not None:
            for g_number, node, _ in _fields(graph):
                if g_number == _GRAPH_NODE and node is not None and _is_string_normalizer(node):
                    yield node


def _is_string_normalizer(node: bytes) -> bool:
    return any(n == _NODE_OP_TYPE and v == b"StringNormalizer" for n, v, _ in _fields(node))


def _is_locale_attr(number: int, value: bytes | None) -> bool:
    return number == _NODE_ATTRIBUTE and value is not None and _string_attrs(value).get(_ATTR_NAME) == b"locale"


def _with_locale(node: bytes, locale: str) -> bytes:
    kept = b"".join(raw for n, v, raw in _fields(node) if not _is_locale_attr(n, v))
    attribute = (
        _len_field(_ATTR_NAME, b"locale")
        + _len_field(_ATTR_S, locale.encode())
        + _encode_varint(_ATTR_TYPE << 3 | _VARINT)
        + _encode_varint(_ATTR_TYPE_STRING)
    )
    return kept + _len_field(_NODE_ATTRIBUTE, attribute)


def set_string_normalizer_locale(model: bytes, locale: str) -> tuple[bytes, int]:
    """Return the serialized ONNX model with `locale` set on every top-level StringNormalizer, and how many."""
    out, patched = bytearray(), 0
    for number, graph, raw in _fields(model):
        if number != _MODEL_GRAPH or graph is None:
            out += raw
            continue
        new_graph = bytearray()
        for g_number, node, g_raw in _fields(graph):
            if g_number == _GRAPH_NODE and node is not None and _is_string_normalizer(node):
                new_graph += _len_field(_GRAPH_NODE, _with_locale(node, locale))
                patched += 1
            else:
                new_graph += g_raw
        out += _len_field(_MODEL_GRAPH, bytes(new_graph))
    return bytes(out), patched


def string_normalizer_locales(model: bytes) -> list[str | None]:
    """The `locale` attribute of each top-level StringNormalizer (None when unset)."""
    found: list[str | None] = []
    for node in _string_normalizers(model):
        locales = [_string_attrs(v).get(_ATTR_S, b"").decode() for n, v, _ in _fields(node) if _is_locale_attr(n, v) and v is not None]
        found.append(locales[-1] if locales else None)
    return found


def model_path() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RlaifError("the hatesonar judge needs the hatesonar package, which is not installed", "pip install hatesonar==0.1.0")
    path = Path(next(iter(spec.submodule_search_locations))) / "model" / "model.onnx"
    if not path.is_file():
        raise RlaifError(f"{path} is missing", "reinstall: pip install --force-reinstall hatesonar==0.1.0")
    return path


def open_session(model: bytes) -> tuple[ort.InferenceSession, str | None]:
    """A CPU session for `model`, trying the shipped locale first, then ones every glibc system has."""
    options = ort.SessionOptions()
    options.log_severity_level = 4  # the failed attempts below are expected; they must not spam stderr
    errors = []
    for locale in FALLBACK_LOCALES:
        data = model if locale is None else set_string_normalizer_locale(model, locale)[0]
        try:
            return ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"]), locale
        except Exception as exc:  # onnxruntime raises its own pybind Fail type
            errors.append(f"{locale or 'default'}: {str(exc).splitlines()[0][:200]}")
    raise RlaifError(
        "onnxruntime cannot build the hatesonar session with any locale: " + " | ".join(errors),
        "if the errors name a locale, install one (apt-get install locales && locale-gen en_US.UTF-8); "
        "otherwise reinstall hatesonar==0.1.0 or use another judge",
    )


@dataclass
class SonarModel:
    """The session plus what it needs to be read: class order, and the locale that had to be set (None: as shipped)."""

    session: ort.InferenceSession
    locale: str | None
    classes: tuple[str, ...] = CLASSES

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities, shape (len(texts), 3), columns in the order of `classes`."""
        if not texts:
            return np.zeros((0, len(self.classes)))
        (rows,) = self.session.run(["output_probability"], {"text": np.array(list(texts), dtype=object)})
        return np.array([[row[i] for i in range(len(self.classes))] for row in rows], dtype=np.float64)


@functools.cache
def load() -> LoadedModel:
    """The HateSonar classifier as a `SonarModel`; built once per process."""
    path = model_path()
    session, locale = open_session(path.read_bytes())
    return LoadedModel(spec=SPEC, kind="onnx-classifier", model=SonarModel(session, locale), tokenizer=None, source=str(path))
