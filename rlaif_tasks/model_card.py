"""What a person reads in the MLflow UI: the run's description and each registered version's model card.

MLflow renders both as Markdown. The run's description says the verdict first and links back to the
Airflow DAG run; a version's description is its card: what trained it, on which data and config,
the gate's evidence with intervals, a few answers of the base policy and of this version to the
same prompts, and how to serve it.
"""

from __future__ import annotations

from pathlib import Path

from rlaif_tasks.config import RunConfig

SAMPLES_SHOWN = 3


def run_description(note: str, airflow_url: str | None) -> str:
    """The DAG run's note (gate.format_note: the verdict, the gate's table) and a link to the Airflow DAG run."""
    return note + (f"\n\nAirflow: [the DAG run]({airflow_url})" if airflow_url else "")


def paired_samples(run_dir: Path, judge: str | None, n: int = SAMPLES_SHOWN, *, reference: Path | None = None) -> list[dict]:
    """The first `n` test prompts' first answers, the base policy's (or `reference`'s samples) and the trained one's, with the deciding judge's score."""
    import pandas as pd

    base_path, final_path = reference or run_dir / "eval" / "baseline_samples.parquet", run_dir / "eval" / "final_samples.parquet"
    if not (base_path.is_file() and final_path.is_file()):
        return []
    base, final = pd.read_parquet(base_path), pd.read_parquet(final_path)
    first = lambda frame: frame.sort_values("sample").drop_duplicates("prompt_id").set_index("prompt_id")  # noqa: E731
    base, final = first(base), first(final)

    def score(frame, pid):
        return float(frame.loc[pid, judge]) if judge and judge in frame.columns else None

    return [
        {"prompt": str(final.loc[pid, "prompt"]), "base": str(base.loc[pid, "response"]), "trained": str(final.loc[pid, "response"]),
         "base_score": score(base, pid), "trained_score": score(final, pid)}
        for pid in list(final.index)[:n] if pid in base.index
    ]


def cell(text: str, score: float | None) -> str:
    """A table cell: one line, no pipe, at most 160 characters, the judge's score after it."""
    return text.replace("|", "/").replace("\n", " ")[:160] + (f" [{score:.2f}]" if score is not None else "")


def model_card(config: RunConfig, name: str, version: str, note: str, refs: dict, samples: list[dict], judge: str | None) -> str:
    """A registered version's description (Markdown), around the DAG run's `note` (gate.format_note): its verdict, then its evidence."""
    verdict, _, evidence = note.partition("\n\n")
    t = config.train
    lines = [
        f"# {name} version {version}", "",
        verdict, "",
        "## What trained it", "",
        f"- {t.describe()} from `{config.model.policy}` ({config.model.dtype}), learning rate {t.rate():g}, batch {t.batch_sizes()[0]}, "
        f"LoRA {'r=' + str(t.lora_r) if t.use_lora else 'off'}, seed {config.seed}",
        f"- reward `{config.reward.display_name}`; run config `{config.name}` (hash `{refs.get('config_hash', '?')}`)",
        f"- prompts `{config.data.source}` (prepared splits sha256 `{str(refs.get('dataset_sha256', '?'))[:16]}`), "
        f"MLflow run `{refs.get('mlflow_run_id')}`",
    ]
    if evidence:
        lines += ["", "## The gate's evidence", "", evidence]
    if samples:
        lines += ["", f"## Answers to the same prompts (first sample; {judge or 'no judge'} score in brackets)", "",
                  "| prompt | base policy | this version |", "|---|---|---|"]
        for s in samples:
            lines.append(f"| {cell(s['prompt'], None)} | {cell(s['base'], s['base_score'])} | {cell(s['trained'], s['trained_score'])} |")
    lines += ["", "## Serve it", "", f"    make serve MODEL=models:/{name}/{version}", "",
              "then `curl -s http://127.0.0.1:5001/invocations -H 'Content-Type: application/json' -d '{\"inputs\": [\"a prompt\"]}'`."]
    return "\n".join(lines)
