"""Users and the release role for Airflow's FAB auth manager (scripts/scaleout.sh runs it).

``ReleaseTrigger`` may read and trigger the four release DAGs (canary, rollback, decision, fleet
rollout) and read their runs, task instances, logs and XComs — nothing else: no other DAG, no
connections, variables, pools or users, no clearing or deleting runs. For CI (`hailo-release
trigger`, the release workflow's canary and fleet jobs) and release managers.

    python -m hailo_airflow.fab_roles --user admin:Admin:/path/admin_password \\
        --user ci-release:ReleaseTrigger:/path/release_password

Passwords are read from files (never argv); running it again resets them to the files' content.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

RELEASE_DAGS = ("hailo_canary_release", "hailo_rollback", "hailo_release_decision", "hailo_fleet_rollout")
RELEASE_ROLE = "ReleaseTrigger"


def release_role_permissions() -> list[tuple[str, str]]:
    """(action, resource) pairs of the release role."""
    perms: list[tuple[str, str]] = []
    for dag_id in RELEASE_DAGS:
        # Triggering a run is "PUT" on the DAG (can_edit) plus "POST" on its runs; can_edit also
        # lets `hailo-release trigger --unpause` unpause it.
        perms += [("can_read", f"DAG:{dag_id}"), ("can_edit", f"DAG:{dag_id}"),
                  ("can_read", f"DAG Run:{dag_id}"), ("can_create", f"DAG Run:{dag_id}")]
    # Sub-entities, each still checked against the DAG-level permission above.
    perms += [("can_read", "DAG Runs"), ("can_read", "Task Instances"), ("can_read", "Task Logs"), ("can_read", "XComs")]
    return perms


def ensure(users: list[tuple[str, str, Path]]) -> None:
    from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder

    with get_application_builder() as appbuilder:
        sm = appbuilder.sm
        role = sm.add_role(RELEASE_ROLE)
        have = {(p.action.name, p.resource.name) for p in role.permissions}
        for action, resource in release_role_permissions():
            if (action, resource) not in have:
                sm.add_permission_to_role(role, sm.create_permission(action, resource))
        for username, role_name, password_file in users:
            password = password_file.read_text().strip()
            user_role = sm.find_role(role_name)
            if user_role is None:
                raise SystemExit(f"no role {role_name!r}")
            user = sm.find_user(username=username)
            if user is None:
                if not sm.add_user(username, username, "hailo", f"{username}@hailo-pipeline.invalid", user_role, password):
                    raise SystemExit(f"could not create user {username}")
            else:
                user.roles = [user_role]
                sm.update_user(user)
                sm.reset_password(user.id, password)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--user", action="append", default=[], metavar="NAME:ROLE:PASSWORD_FILE")
    args = parser.parse_args(argv)
    users = []
    for spec in args.user:
        name, role, path = spec.split(":", 2)
        users.append((name, role, Path(path)))
    ensure(users)
    print(f"fab_roles: role {RELEASE_ROLE} and {len(users)} user(s) in place", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
