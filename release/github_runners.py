"""Our self-hosted runners on GitHub: the label each carries, the one workflow its runner group may
run, and minting a just-in-time (single-job) configuration for one of them
(`hailo-release runner-jitconfig` → `runner/register_runner.sh --jit`). The settings check
(release.github_settings_check) verifies the runner groups against the same table.
"""

from __future__ import annotations

import re

from release.errors import InvalidInput
from release.github_api import ORG_RE, ApiError, GitHubApi, path_segment

# Runner label → the only workflow (at refs/heads/main) its runner group may run.
RUNNER_WORKFLOWS = {"hailo-builder": "release.yml", "hailo-rollback": "rollback.yml"}
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", re.ASCII)


def generate_jitconfig(api: GitHubApi, *, org: str, group: str, label: str, name: str) -> str:
    """A single-job runner configuration for `name` in runner group `group`, with labels
    self-hosted + `label` (POST /orgs/{org}/actions/runners/generate-jitconfig)."""
    if not ORG_RE.fullmatch(org):
        raise InvalidInput(f"--org must be an organisation login, got {org!r}")
    if label not in RUNNER_WORKFLOWS:
        raise InvalidInput(f"--label must be one of {sorted(RUNNER_WORKFLOWS)}, got {label!r}")
    for what, value in (("--group", group), ("--name", name)):
        if not _NAME_RE.fullmatch(value):
            raise InvalidInput(f"{what} must match [A-Za-z0-9][A-Za-z0-9_.-]{{0,63}}, got {value!r}")
    all_groups = api.get_all(f"/orgs/{path_segment(org)}/actions/runner-groups", "runner_groups")
    groups = [g for g in all_groups if g.get("name") == group]
    if len(groups) != 1:
        raise InvalidInput(f"organisation {org} has no runner group named {group!r}")
    if groups[0].get("default"):
        raise InvalidInput(f"runner group {group!r} is the default group: it cannot be limited to one workflow")
    body = api.post(f"/orgs/{path_segment(org)}/actions/runners/generate-jitconfig",
                    {"name": name, "runner_group_id": int(groups[0]["id"]), "labels": ["self-hosted", label],
                     "work_folder": "_work"})
    config = body.get("encoded_jit_config") if isinstance(body, dict) else None
    if not isinstance(config, str) or not re.fullmatch(r"[A-Za-z0-9+/=_-]{16,}", config):
        raise ApiError(0, "generate-jitconfig", "the response holds no encoded_jit_config")
    return config
