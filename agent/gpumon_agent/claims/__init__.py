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

Entry points: ``ClaimRegistry`` (files), ``choose_gpus`` (allocation, pure), ``annotate`` and
``IdleTracker`` (per-GPU claim status in a Report); the ``gpumon-agent claims`` listing is
gpumon_agent.cli's.
"""

from gpumon_agent.claims.registry import (  # noqa: F401
    CLAIM_SCHEMA,
    CLAIM_VERSION,
    DEFAULT_LOCK_TIMEOUT_S,
    LOCK_NAME,
    MAX_ALLOCATION_FILES,
    MAX_CLAIM_BYTES,
    MAX_CLAIM_ERRORS,
    MAX_CLAIM_FILES,
    MAX_CLAIM_GPUS,
    MAX_COMMAND_CHARS,
    MAX_GPU_INDEX,
    MAX_JOB_CHARS,
    MAX_JSON_DEPTH,
    MAX_PID,
    MAX_PROGRESS_BYTES,
    MAX_PROGRESS_DEPTH,
    MAX_TMP_PIDS,
    MAX_UID,
    MAX_UUID_CHARS,
    START_TIME_SLACK_S,
    ClaimedGpu,
    ClaimError,
    ClaimRecord,
    ClaimRegistry,
    GpuRequest,
    IdleTracker,
    InvalidClaimFile,
    LockTimeout,
    NoFreeGpu,
    RegistryError,
    RegistryScan,
    agent_uid,
    annotate,
    apply_claims,
    check_owner_process,
    choose_gpus,
    claim_gpus,
    clean_progress,
    json_depth_ok,
    new_record,
    parse_gpu_request,
)
