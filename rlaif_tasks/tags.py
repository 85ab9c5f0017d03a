"""Every `rlaif.*` tag name the project sets on MLflow runs and model versions, in one place.

A ground-level module (it imports nothing), so any layer can name a tag without importing the
module that sets it. Values are part of the stores' contract: renaming one orphans old runs.
"""

# -- on the MLflow run of a DAG run (tracking.py, stages/) ------------------------------------------
TAG_DAG_ID = "rlaif.dag_id"
TAG_DAG_RUN_ID = "rlaif.dag_run_id"
TAG_RUN_KEY = "rlaif.run_key"
"""Derived from (dag id, DAG run id): how a retried task finds its MLflow run again."""
TAG_CONFIG_HASH = "rlaif.config_hash"
TAG_DATASET = "rlaif.dataset_sha256"
TAG_CODE_VERSION = "rlaif.code_version"
TAG_CODE = "rlaif.code_sha256"
"""A hash of the package's files (code and bundled data): what evaluations depend on, where the git commit also moves
with docs and tests."""
TAG_EVAL_SETTINGS = "rlaif.eval_settings"
TAG_JUDGES = "rlaif.judges_sha256"
TAG_JUDGE_REVISIONS = "rlaif.judges"
TAG_RUN_DIR = "rlaif.run_dir"
TAG_AIRFLOW_URL = "rlaif.airflow_url"
TAG_SEED = "rlaif.seed"
TAG_SEED_SOURCE = "rlaif.seed_source"
TAG_FAILURE = "rlaif.failure"
"""Why the DAG run failed, set by the failure callback; removed when a retry repairs the run."""
TAG_REWARD_MODEL = "rlaif.reward_model"
"""The registered reward model version a run trains against, when reward.model names one (`models:/NAME/N`)."""
TAG_ARTIFACTS_DELETED = "rlaif.artifacts_deleted"
"""When gc deleted the run's artefacts (samples, plots, reports): its run folder expired; metrics and params stay."""
TAG_PREFERENCES = "rlaif.preferences_sha256"
TAG_PREFERENCES_FROM = "rlaif.preferences_from"

# -- the gate's decision (gate.py), on the run and on the model version -----------------------------
TAG_GATE = "rlaif.gate"
TAG_GATE_REFERENCE = "rlaif.gate_reference"
TAG_GATE_REASON = "rlaif.gate_reason"
TAG_GATE_FAILED = "rlaif.gate_failed"

# -- on registered model versions (registry.py) -----------------------------------------------------
TAG_STATUS = "rlaif.status"
TAG_REPLACED = "rlaif.replaced_version"
TAG_PROMOTION_LOCK = "rlaif.promotion_lock"
"""On the registered model: the lease of the promotion in progress."""
TAG_WEIGHTS = "rlaif.weights_sha256"
TAG_PROMOTED_AT = "rlaif.promoted_at"
TAG_ROLLED_BACK_AT = "rlaif.rolled_back_at"
TAG_REJECTED_REASON = "rlaif.rejected_reason"
TAG_MODEL_KIND = "rlaif.model_kind"
TAG_SIGN_OFF = "rlaif.sign_off"
"""With gate.approval: required, a person's answer: approved, rejected or timed_out (stages/sign_off.py)."""
TAG_SIGNED_OFF_BY = "rlaif.signed_off_by"
TAG_SIGNED_OFF_AT = "rlaif.signed_off_at"

TAG_PREFIX = "rlaif."
"""A run's tags with this prefix are copied onto the model versions it registers."""
