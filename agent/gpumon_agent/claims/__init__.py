"""The GPU claims registry: which job holds which GPU, as training jobs registered it.

Training jobs write claim files into the registry (``AgentSettings.claims_path``, default
``/run/gpumon/claims``), a directory any user may write in, so every file is checked before it
counts (the layout and the trust model: gpumon_agent.claims.registry, docs/claims.md,
docs/security.md). A claim is live while the process that made it runs.

The package, by section:

- ``record``: ``ClaimRecord`` (one claim file's content, validated and bounded), ``new_record``,
  ``clean_progress``, ``check_owner_process`` (is its process alive and the one that wrote it).
- ``registry``: ``ClaimRegistry`` (the directory: scan, read, create, rewrite, release, the
  allocation lock, the agent's upkeep), ``agent_uid``.
- ``allocation``: ``parse_gpu_request``, ``choose_gpus`` (pure), ``claim_gpus`` (choose and
  record under the lock).
- ``annotation``: ``annotate`` and ``IdleTracker`` (per-GPU claim status in a Report),
  ``apply_claims``.

Import from the package (``from gpumon_agent.claims import ClaimRegistry``): it is the public
API; the sections are how it is kept. The ``gpumon-agent claims`` listing is gpumon_agent.cli's.
"""

from gpumon_agent.claims.allocation import (
    MAX_ALLOCATION_FILES,
    GpuRequest,
    NoFreeGpu,
    choose_gpus,
    claim_gpus,
    parse_gpu_request,
)
from gpumon_agent.claims.annotation import IdleTracker, annotate, apply_claims
from gpumon_agent.claims.record import (
    CLAIM_SCHEMA,
    CLAIM_VERSION,
    MAX_CLAIM_BYTES,
    MAX_CLAIM_GPUS,
    MAX_COMMAND_CHARS,
    MAX_GPU_INDEX,
    MAX_JOB_CHARS,
    MAX_JSON_DEPTH,
    MAX_PID,
    MAX_PROGRESS_BYTES,
    MAX_PROGRESS_DEPTH,
    MAX_UID,
    MAX_UUID_CHARS,
    START_TIME_SLACK_S,
    ClaimedGpu,
    ClaimError,
    ClaimRecord,
    InvalidClaimFile,
    check_owner_process,
    clean_progress,
    json_depth_ok,
    new_record,
)
from gpumon_agent.claims.registry import (
    DEFAULT_LOCK_TIMEOUT_S,
    LOCK_NAME,
    MAX_CLAIM_ERRORS,
    MAX_CLAIM_FILES,
    MAX_TMP_PIDS,
    ClaimRegistry,
    LockTimeout,
    RegistryError,
    RegistryScan,
    agent_uid,
)

__all__ = [
    "CLAIM_SCHEMA",
    "CLAIM_VERSION",
    "DEFAULT_LOCK_TIMEOUT_S",
    "LOCK_NAME",
    "MAX_ALLOCATION_FILES",
    "MAX_CLAIM_BYTES",
    "MAX_CLAIM_ERRORS",
    "MAX_CLAIM_FILES",
    "MAX_CLAIM_GPUS",
    "MAX_COMMAND_CHARS",
    "MAX_GPU_INDEX",
    "MAX_JOB_CHARS",
    "MAX_JSON_DEPTH",
    "MAX_PID",
    "MAX_PROGRESS_BYTES",
    "MAX_PROGRESS_DEPTH",
    "MAX_TMP_PIDS",
    "MAX_UID",
    "MAX_UUID_CHARS",
    "START_TIME_SLACK_S",
    "ClaimError",
    "ClaimRecord",
    "ClaimRegistry",
    "ClaimedGpu",
    "GpuRequest",
    "IdleTracker",
    "InvalidClaimFile",
    "LockTimeout",
    "NoFreeGpu",
    "RegistryError",
    "RegistryScan",
    "agent_uid",
    "annotate",
    "apply_claims",
    "check_owner_process",
    "choose_gpus",
    "claim_gpus",
    "clean_progress",
    "json_depth_ok",
    "new_record",
    "parse_gpu_request",
]
