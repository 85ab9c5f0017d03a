"""Human preference pairs (prompt, chosen, rejected) from a local file or a hub dataset, validated.

Preference files come from labelling tools, spreadsheets and scrapes, so they carry empty cells,
ties, copies and mis-encoded text. A pair like that teaches DPO/reward models nothing or the wrong
thing, and one bad cell must not sink a whole import: each rule drops only its rows and says so in a
drop report (rows in, rows out, per reason a count and a few example rows). Rows are the 0-based
position of a record in the source (for a .jsonl file, among its non-blank lines).

Reasons, checked in this order (a row counts under the first one it fails):

    unparseable   a .jsonl line that is not a JSON object
    not_text      a cell that holds a list/dict (e.g. chat messages) instead of text
    invalid_utf8  bytes that do not decode as UTF-8, lone surrogates, or U+FFFD from a lossy decode
    missing       prompt, chosen or rejected absent or blank
    identical     chosen equals rejected (ignoring surrounding whitespace)
    too_long      prompt + chosen or prompt + rejected longer than `max_chars` characters
    duplicate     the same (prompt, chosen, rejected) as an earlier kept row

Pairs labelled by people in Airflow (the human_preferences DAG) are made by preferences/labelling.py
and checked here like any imported file.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from rlaif_tasks.errors import RlaifError

log = logging.getLogger(__name__)

COLUMNS = ("prompt", "chosen", "rejected")
REASONS = ("unparseable", "not_text", "invalid_utf8", "missing", "identical", "too_long", "duplicate")
LOCAL_SUFFIXES = {".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet"}
DEFAULT_MAX_CHARS = 4000
EXAMPLES_PER_REASON = 3
_UNPARSEABLE = "__rlaif_unparseable__"

_FIXES = {
    "unparseable": "make every .jsonl line one JSON object",
    "not_text": "map prompt/chosen/rejected (column_mapping) to columns holding plain text, not chat message lists",
    "invalid_utf8": "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 in > out) at the source, not after a lossy decode",
    "missing": "check column_mapping points prompt/chosen/rejected at the columns that hold the texts",
    "identical": "keep only pairs whose chosen and rejected responses differ",
    "too_long": "raise max_chars, or shorten the texts",
    "duplicate": "remove the repeated pairs",
}


# -- reading ---------------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> pd.DataFrame:
    """Line by line, so one undecodable byte or broken line costs one row, not the file."""
    records: list[dict[str, Any]] = []
    lines = [line for line in path.read_bytes().split(b"\n") if line.strip()]
    for i, raw in enumerate(lines):
        text = raw.decode("utf-8", errors="surrogateescape")
        if i == 0:
            text = text.removeprefix("\ufeff")
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            record = None
        records.append(record if isinstance(record, dict) else {_UNPARSEABLE: True})
    columns = list(dict.fromkeys(key for record in records for key in record))
    return pd.DataFrame({c: [r.get(c) for r in records] for c in columns}, index=range(len(records)), dtype=object)


def _read_parquet(path: Path) -> pd.DataFrame:
    """String columns with invalid UTF-8 come back as bytes, to be reported per row instead of failing the read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    for i, field in enumerate(table.schema):
        if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            try:
                table.column(i).validate(full=True)
            except pa.ArrowInvalid:
                binary = pa.large_binary() if pa.types.is_large_string(field.type) else pa.binary()
                chunks = [chunk.view(binary) for chunk in table.column(i).chunks]
                table = table.set_column(i, pa.field(field.name, binary), pa.chunked_array(chunks, type=binary))
    return table.to_pandas()


def _read_local(path: Path) -> pd.DataFrame:
    kind = LOCAL_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise RlaifError(f"preference file {path} has an unsupported type {path.suffix!r}", "use a .jsonl, .csv or .parquet file")
    if not path.is_file():
        raise RlaifError(f"preference file {path} does not exist", "pass an existing .jsonl/.csv/.parquet file or a hub dataset id")
    try:
        if kind == "jsonl":
            return _read_jsonl(path)
        if kind == "parquet":
            return _read_parquet(path)
        return pd.read_csv(path, dtype=object, keep_default_na=False, encoding="utf-8-sig", encoding_errors="surrogateescape")
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise RlaifError(
            f"preference file {path} cannot be read as {kind}: {exc}",
            "check the file: csv needs a header row, parquet a valid file",
        ) from exc


def _read_hub(dataset_id: str, split: str, config_name: str | None) -> pd.DataFrame:
    import datasets

    try:
        dataset = datasets.load_dataset(dataset_id, config_name, split=split)
    except (ConnectionError, OSError, ValueError, FileNotFoundError) as exc:
        raise RlaifError(
            f"the hub dataset {dataset_id!r} (split {split!r}) could not be loaded: {str(exc)[:300]}",
            "check the dataset id (owner/name) and split; offline machines need it in the local HF datasets cache, "
            "or pass a local .jsonl/.csv/.parquet file",
        ) from exc
    return dataset.to_pandas()


def read_preference_source(source: str | Path, *, split: str = "train", config_name: str | None = None) -> pd.DataFrame:
    """The raw table of a local .jsonl/.csv/.parquet file, or of a hub dataset id, before any checks."""
    path = Path(source).expanduser()
    if path.suffix.lower() in LOCAL_SUFFIXES or path.exists():
        return _read_local(path)
    return _read_hub(str(source), split, config_name)


# -- validation ------------------------------------------------------------------------------------


def _resolve_columns(frame: pd.DataFrame, column_mapping: Mapping[str, str] | None) -> dict[str, str]:
    mapping = dict(column_mapping or {})
    unknown = sorted(set(mapping) - set(COLUMNS))
    if unknown:
        raise RlaifError(
            f"column_mapping has keys {unknown}; its keys must be among {list(COLUMNS)}",
            'map our names to the file\'s, e.g. {"prompt": "question", "chosen": "better", "rejected": "worse"}',
        )
    resolved = {ours: mapping.get(ours, ours) for ours in COLUMNS}
    found = [str(c) for c in frame.columns if c != _UNPARSEABLE]
    if not found and len(frame):
        raise RlaifError(f"none of the {len(frame)} .jsonl line(s) is a JSON object", "write one JSON object per line, e.g. {\"prompt\": ..., \"chosen\": ..., \"rejected\": ...}")
    absent = [f"{ours}" + (f" (mapped to {theirs!r})" if theirs != ours else "") for ours, theirs in resolved.items() if theirs not in frame.columns]
    if absent:
        raise RlaifError(
            f"the preference data has no column for {', '.join(absent)}; columns found: {found}",
            'set column_mapping from our names to the data\'s columns, e.g. {"prompt": "question", "chosen": "response_a", "rejected": "response_b"}',
        )
    return resolved


def _is_missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _bad_unicode(text: str) -> bool:
    return "\ufffd" in text or any("\ud800" <= ch <= "\udfff" for ch in text)


def _as_text(value: Any) -> tuple[str | None, str | None]:
    """(text, reason): the cell as text, or the reason it cannot be one."""
    if _is_missing(value):
        return None, "missing"
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None, "invalid_utf8"
    if isinstance(value, (list, tuple, dict, set, np.ndarray)):
        return None, "not_text"
    text = value if isinstance(value, str) else str(value)
    if _bad_unicode(text):
        return None, "invalid_utf8"
    return text, None


def _row_reason(texts: list[str | None], reasons: list[str | None], max_chars: int) -> str | None:
    for reason in ("not_text", "invalid_utf8"):
        if reason in reasons:
            return reason
    if any(r == "missing" for r in reasons) or any(not t.strip() for t in texts if t is not None):
        return "missing"
    prompt, chosen, rejected = texts
    if chosen.strip() == rejected.strip():
        return "identical"
    if len(prompt) + max(len(chosen), len(rejected)) > max_chars:
        return "too_long"
    return None


def empty_report(rows_in: int = 0) -> dict[str, Any]:
    return {"rows_in": rows_in, "rows_out": 0, "dropped": {r: {"count": 0, "examples": []} for r in REASONS}}


def describe_drops(report: Mapping[str, Any]) -> str:
    """'missing: 3 (rows 0, 4, 7), too_long: 1 (row 2)' for the reasons that dropped anything."""
    parts = []
    for reason, info in report["dropped"].items():
        if info["count"]:
            rows = ", ".join(str(r) for r in info["examples"])
            parts.append(f"{reason}: {info['count']} (row{'s' if len(info['examples']) > 1 else ''} {rows}{', ...' if info['count'] > len(info['examples']) else ''})")
    return ", ".join(parts) or "nothing"


def validate_preferences(
    frame: pd.DataFrame,
    *,
    column_mapping: Mapping[str, str] | None = None,
    max_chars: int = DEFAULT_MAX_CHARS,
    source: str = "the preference data",
    keep_columns: Sequence[str] = (),
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Apply the column mapping and every drop rule; return the clean pairs and the drop report.

    The clean frame has prompt, chosen, rejected (texts unstripped: leading spaces can be part of a
    response), then the `keep_columns` of the kept rows as they were (e.g. who labelled a pair).
    Raises RlaifError when a column is absent or no row survives.
    """
    if max_chars <= 0:
        raise RlaifError(f"max_chars must be positive, got {max_chars}", "set max_chars to the longest prompt+response to keep, e.g. 4000")
    resolved = _resolve_columns(frame, column_mapping)
    report = empty_report(len(frame))
    unparseable = frame[_UNPARSEABLE].tolist() if _UNPARSEABLE in frame.columns else [None] * len(frame)
    cells = zip(*(frame[resolved[c]].tolist() for c in COLUMNS))
    kept: dict[str, list[str]] = {c: [] for c in COLUMNS}
    extra_columns = [c for c in keep_columns if c not in COLUMNS]
    absent = [c for c in extra_columns if c not in frame.columns]
    if absent:
        raise RlaifError(f"{source} has no column(s) {absent} to keep; columns found: {[str(c) for c in frame.columns]}", "keep only columns the data has")
    extras = {c: frame[c].tolist() for c in extra_columns}
    kept_extras: dict[str, list[Any]] = {c: [] for c in extra_columns}
    seen: set[tuple[str, str, str]] = set()
    for row, (flag, values) in enumerate(zip(unparseable, cells)):
        if flag is True:
            reason = "unparseable"
        else:
            texts, reasons = zip(*(_as_text(v) for v in values))
            reason = _row_reason(list(texts), list(reasons), max_chars)
            if reason is None and texts in seen:
                reason = "duplicate"
        if reason is not None:
            info = report["dropped"][reason]
            info["count"] += 1
            if len(info["examples"]) < EXAMPLES_PER_REASON:
                info["examples"].append(row)
            continue
        seen.add(texts)
        for column, text in zip(COLUMNS, texts):
            kept[column].append(text)
        for column in extra_columns:
            kept_extras[column].append(extras[column][row])
    clean = pd.DataFrame({**kept, **kept_extras}, columns=[*COLUMNS, *extra_columns])
    report["rows_out"] = len(clean)
    if clean.empty:
        present = [r for r in REASONS if report["dropped"][r]["count"]]
        raise RlaifError(
            f"no preference pairs left in {source}: {report['rows_in']} row(s) in, dropped {describe_drops(report)}",
            "; ".join(_FIXES[r] for r in present) or "add rows with prompt, chosen and rejected texts",
        )
    if report["rows_out"] < report["rows_in"]:
        log.warning("%s: kept %d of %d preference rows; dropped %s", source, report["rows_out"], report["rows_in"], describe_drops(report))
    return clean, report


def load_human_preferences(
    source: str | Path,
    *,
    column_mapping: Mapping[str, str] | None = None,
    max_chars: int = DEFAULT_MAX_CHARS,
    split: str = "train",
    config_name: str | None = None,
    max_rows: int = 200_000,
    max_file_mb: float = 512.0,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read human preference pairs from a file or hub dataset and validate them (see `validate_preferences`).

    A local file over `max_file_mb` is refused before it is read, a source with more than `max_rows` rows before
    it is validated: an import is a labelled set, and a night must not run out of memory on a mistaken dump.
    """
    path = Path(source).expanduser()
    if path.is_file() and path.stat().st_size > max_file_mb * 1e6:
        raise RlaifError(
            f"the preference file {path} is {path.stat().st_size / 1e6:.0f} MB, over preferences.max_file_mb={max_file_mb:g}",
            "import a smaller file (split it), or raise preferences.max_file_mb in the config if it really is one preference set",
        )
    frame = read_preference_source(source, split=split, config_name=config_name)
    if len(frame) > max_rows:
        raise RlaifError(
            f"the preference data {source} has {len(frame)} rows, over preferences.max_rows={max_rows}",
            "import a sample of it, or raise preferences.max_rows in the config",
        )
    return validate_preferences(frame, column_mapping=column_mapping, max_chars=max_chars, source=str(source))
