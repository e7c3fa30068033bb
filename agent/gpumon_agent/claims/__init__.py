"""The GPU claims registry: which job holds which GPU, as training jobs registered it.

Layout (``AgentSettings.claims_path``, default ``/run/gpumon/claims``; docs/claims.md)::

    claims/                     mode 1777 (sticky, world-writable, like /tmp), made by the agent
      .lock                     flock(2) target serialising allocation (0644, the agent's)
      u1000-p4242-9f3a1c.json   one claim: u<uid>-p<pid>-<random>.json, owned by that uid
      .u1000-p4242-….json.gpumon-tmp-<pid>-…   a claim being written (gpumon_agent.atomic)

Trust model (docs/security.md): any user may write here, so every file is checked before it
counts. The directory and those above it must be owned by root or the agent's user (whoever
owns it could delete and forge every claim). A file's owner, the uid in its name and the uid
inside must agree (the sticky bit stops users from replacing each other's files, the uid check
stops them from forging someone else's); symlinks and non-regular files are refused
(O_NOFOLLOW, fstat); size, nesting depth, numbers and fields are bounded. Files are read in
turns per owner, at most MAX_CLAIM_FILES a scan, so a user who floods the registry hides only
their own claims; allocation reads every claim or refuses. A bad file becomes a
``ClaimFileError`` in the Report (at most MAX_CLAIM_ERRORS), never an exception.

A claim is live while the process that made it runs: same pid, same boot-relative start time
(gpumon_agent.pidstat: a reused pid does not revive it, a wall-clock step does not kill it),
same uid, not a zombie. A dead claim is ignored, and removed by whoever may: its owner, root, or
the registry's owner (the agent, which made the directory; in a sticky directory its owner may
delete any file). The agent also remakes a deleted registry and replaces a lock file a user
could lock others out with (``upkeep``), and clears dead writers' temporary files.

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
