"""The rlaif_maintenance DAG's stage: retention applied to one config's registry, run folders and cache."""

from __future__ import annotations

from rlaif_tasks import retention
from rlaif_tasks.config import load_config
from rlaif_tasks.stages.common import connect


def collect_garbage(config_path: str, *, dry_run: bool = False) -> dict:
    """What retention.collect_garbage deleted (small and JSON-able for XCom), with a line a person reads in the log."""
    config = load_config(config_path)
    result = retention.collect_garbage(config, connect(config), dry_run=dry_run)
    expired = {name: versions for name, versions in result["expire_versions"].items() if versions}
    text = (
        f"gc of {config.name}: versions {expired or 'none'}, {len(result['run_folders'])} run folders, "
        f"{len(result['cache'])} cached downloads{' (dry run)' if dry_run else ''}; freed {result['freed_bytes'] / 1e6:.1f} MB"
    )
    return {**result, "text": text}
