"""`rlaif`: every stage from the command line, each reading the same run config.

    rlaif models bootstrap --config configs/demo.yaml
    rlaif data prepare --config configs/demo.yaml --set data.test_size=100
    rlaif score --config configs/demo.yaml --text "you are an idiot" --text "have a nice day"
    rlaif evaluate --config configs/demo.yaml --label baseline
    rlaif run --config configs/demo.yaml
    rlaif nightly --config configs/demo.yaml
    rlaif registry show rlaif-demo-policy
    rlaif registry promote rlaif-demo-policy 3
    rlaif registry rollback rlaif-demo-policy
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from rlaif_tasks import registry, retention
from rlaif_tasks.config import RunConfig, load_config, parse_override
from rlaif_tasks.errors import RlaifError
from rlaif_tasks.models import BUNDLED_MODELS
from rlaif_tasks.rewards import build_scorer
from rlaif_tasks.stages.nightly import run_all
from rlaif_tasks.tracking import registered_model_name

log = logging.getLogger("rlaif")


def _config(args) -> RunConfig:
    return load_config(args.config, args.overrides)


def cmd_config_show(args) -> int:
    config = _config(args)
    print(config.to_yaml(), end="")
    print(f"# config hash: {config.config_hash()}")
    return 0


def cmd_models_bootstrap(args) -> int:
    """Load (and convert/cache where needed) every model the config names, so later stages start fast."""
    from rlaif_tasks.evaluation.runner import load_judges, load_policy

    config = _config(args)
    start = time.perf_counter()
    policy = load_policy(config)
    print(f"policy  {config.model.policy:<28} {policy.kind:<20} {policy.source}")
    build_scorer(config.reward, purpose="reward")
    print(f"reward  {config.reward.model:<28} ready")
    for judge in load_judges(config):
        print(f"judge   {judge.name:<28} ready")
    print(f"bundled models: {', '.join(BUNDLED_MODELS)}  ({time.perf_counter() - start:.1f}s)")
    return 0


def cmd_data_prepare(args) -> int:
    from rlaif_tasks.stages.local import prepare_dataset

    manifest_path = prepare_dataset(_config(args))
    manifest = json.loads(manifest_path.read_text())
    print(json.dumps({k: manifest[k] for k in ("counts", "source") if k in manifest}, indent=2))
    print(f"manifest: {manifest_path}")
    return 0


def _read_texts(args) -> list[str]:
    texts = list(args.text or [])
    if args.file:
        path = Path(args.file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise RlaifError(f"text file {path} does not exist", "pass --file with an existing file, one text per line") from None
        except UnicodeDecodeError as exc:
            raise RlaifError(f"text file {path} is not UTF-8 ({exc.reason} at byte {exc.start})", "re-encode it as UTF-8, e.g. iconv -f latin1 -t utf-8") from None
        texts += [line for line in lines if line.strip()]
    if not texts:
        raise RlaifError("no texts to score", "pass --text TEXT (repeatable) or --file FILE with one text per line")
    return texts


def cmd_score(args) -> int:
    """Score texts with the training reward and every evaluation judge."""
    from rlaif_tasks.evaluation.runner import load_judges

    config = _config(args)
    texts = _read_texts(args)
    columns = {f"reward:{config.reward.display_name}": build_scorer(config.reward, purpose="reward")(texts)}
    for judge in load_judges(config):
        columns[f"toxicity:{judge.name}"] = judge(texts)
    if args.json:
        print(json.dumps([{"text": t, **{k: v[i] for k, v in columns.items()}} for i, t in enumerate(texts)], indent=2))
        return 0
    print("  ".join(f"{k:>26}" for k in columns) + "  text")
    for i, text in enumerate(texts):
        print("  ".join(f"{v[i]:>26.4f}" for v in columns.values()) + f"  {text[:60]}")
    return 0


def cmd_evaluate(args) -> int:
    from rlaif_tasks.evaluation.runner import compare_evaluations, evaluate_model
    from rlaif_tasks.evaluation.toxicity import format_comparison, format_evaluation, read_evaluation

    config = _config(args)
    path = evaluate_model(config, args.label, args.model)
    print(format_evaluation(read_evaluation(path)))
    print(f"summary: {path}")
    if args.label != "baseline" and (path.parent / "baseline.json").is_file():
        print(format_comparison(compare_evaluations(config, "baseline", args.label)["judges"]))
    return 0


def cmd_run(args) -> int:
    """One alignment run in one process: prepare data, evaluate the base policy, train, evaluate again."""
    from rlaif_tasks.stages.local import run_pipeline

    config = _config(args)
    report = run_pipeline(config)
    print(report["text"])
    return 0


def _model_name(args) -> str:
    return args.name or registered_model_name(_config(args))


def cmd_registry_show(args) -> int:
    """Aliases and versions of a registered policy."""
    info = registry.describe(_model_name(args), config=_config(args))
    print(json.dumps(info, indent=2) if args.json else registry.format_description(info))
    return 0


def cmd_registry_promote(args) -> int:
    """Make a version the champion by hand (the gate is not consulted)."""
    result = registry.promote(args.name, args.version, config=_config(args))
    if result["changed"]:
        print(f"{result['name']}: version {result['champion']} is the champion (previous: {result['previous'] or 'none'})")
    else:
        print(f"{result['name']}: version {result['champion']} already is the champion")
    return 0


def cmd_registry_rollback(args) -> int:
    """Restore the previous champion."""
    result = registry.rollback(_model_name(args), config=_config(args))
    print(
        f"{result['name']}: version {result['champion']} is the champion again; version {result['rolled_back']} has alias rolled_back"
        f" (previous: {result['previous'] or 'none'})"
    )
    return 0


def cmd_nightly(args) -> int:
    """The nightly DAG's stages in one process: data, baseline, training, evaluation, registration, gate."""
    overrides = dict(parse_override(o) for o in args.overrides)
    result = run_all(args.config, overrides, dag_id=args.dag_id, dag_run_id=args.dag_run_id)
    print(result["text"])
    return 0


def cmd_gc(args) -> int:
    """Delete what retention no longer keeps: expired registered versions with their artefacts, old run folders and their MLflow runs' artefacts, cached downloads."""
    result = retention.collect_garbage(_config(args), dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    for name, versions in result["expire_versions"].items():
        print(f"{name}: {verb} versions {', '.join(versions) or 'none'}; kept {', '.join(result['keep_versions'][name])}")
    print(f"run folders {verb}: {len(result['run_folders'])}; MLflow runs whose artefacts are {verb.split()[-1]}: "
          f"{len(result['run_artifacts'])}; cached downloads {verb}: {len(result['cache'])}")
    if not args.dry_run:
        print(f"freed {result['freed_bytes'] / 1e6:.1f} MB on this machine")
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", help="YAML run config (defaults apply when omitted)")
    common.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config field, e.g. train.steps=20 (repeatable)")
    common.add_argument("--verbose", "-v", action="store_true")

    parser = argparse.ArgumentParser(prog="rlaif", description="Align language models with RL from AI or human feedback.")
    sub = parser.add_subparsers(dest="command", required=True)

    config = sub.add_parser("config", help="inspect the run config").add_subparsers(dest="action", required=True)
    config.add_parser("show", parents=[common], help="print the effective config").set_defaults(fn=cmd_config_show)

    models = sub.add_parser("models", help="the model zoo").add_subparsers(dest="action", required=True)
    models.add_parser("bootstrap", parents=[common], help="load and cache every model the config names").set_defaults(fn=cmd_models_bootstrap)

    data = sub.add_parser("data", help="prompt data").add_subparsers(dest="action", required=True)
    data.add_parser("prepare", parents=[common], help="load, filter and split the prompts").set_defaults(fn=cmd_data_prepare)

    score = sub.add_parser("score", parents=[common], help="score texts with the reward and the judges")
    score.add_argument("--text", action="append", help="a text to score (repeatable)")
    score.add_argument("--file", help="a UTF-8 file with one text per line")
    score.add_argument("--json", action="store_true", help="print JSON instead of a table")
    score.set_defaults(fn=cmd_score)

    evaluate = sub.add_parser("evaluate", parents=[common], help="toxicity of a policy on the held-out prompts")
    evaluate.add_argument("--label", default="baseline", help="name of this evaluation in the run directory")
    evaluate.add_argument("--model", help="policy to evaluate instead of model.policy (a folder, hub id or bundled name)")
    evaluate.set_defaults(fn=cmd_evaluate)

    run = sub.add_parser("run", aliases=["train"], parents=[common], help="prepare data, baseline evaluation, training, final evaluation (one process)")
    run.set_defaults(fn=cmd_run)

    nightly = sub.add_parser("nightly", parents=[common], help="the nightly run in one process: train, evaluate, register, promote if better")
    nightly.add_argument("--dag-id", default="rlaif_nightly", help="recorded as the MLflow run's rlaif.dag_id tag")
    nightly.add_argument("--dag-run-id", help="reuse a run id to resume that run (default: manual__<UTC time>)")
    nightly.set_defaults(fn=cmd_nightly)

    gc = sub.add_parser("gc", parents=[common], help="delete expired registered versions (and their artefacts), old run folders and cached models")
    gc.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    gc.set_defaults(fn=cmd_gc)

    reg = sub.add_parser("registry", help="registered policies and their aliases (champion, challenger, previous)").add_subparsers(dest="action", required=True)
    show = reg.add_parser("show", parents=[common], help="aliases and versions of a registered model")
    show.add_argument("name", nargs="?", help="registered model name (default: tracking.registered_model of the config)")
    show.add_argument("--json", action="store_true", help="print JSON instead of a table")
    show.set_defaults(fn=cmd_registry_show)
    promote = reg.add_parser("promote", parents=[common], help="make VERSION the champion; the old champion becomes previous")
    promote.add_argument("name")
    promote.add_argument("version")
    promote.set_defaults(fn=cmd_registry_promote)
    rollback = reg.add_parser("rollback", parents=[common], help="make the previous champion the champion again")
    rollback.add_argument("name", nargs="?", help="registered model name (default: tracking.registered_model of the config)")
    rollback.set_defaults(fn=cmd_registry_rollback)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return args.fn(args)
    except RlaifError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
