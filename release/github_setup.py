"""GitHub REST API commands for the trust boundary (docs/github-setup.md).

`hailo-release check-github`: what the API can report about the settings the boundary relies on,
and what is missing. Read-only: only GET requests. Exit codes: 0 every required setting verified;
1 a required setting is missing or could not be read (the output says which and why);
2 bad arguments. Each check names what breaks without it; the same names head the sections of
the setup document.

`hailo-release runner-jitconfig`: mint a just-in-time (single-job) runner configuration in an
organisation runner group and print it to stdout for `runner/register_runner.sh --jit`.

The token comes from the environment (GITHUB_TOKEN or GH_TOKEN), never from argv. Standard
library only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from release.errors import InvalidInput
from release.github_api import DEFAULT_API, ApiError, GitHubApi
from release.github_runners import RUNNER_WORKFLOWS, generate_jitconfig
from release.github_settings_check import Checker, report_lines

# The subcommands only (argparse, token, output); the checks are in release.github_settings_check,
# the runner table and JIT minting in release.github_runners, the REST client in release.github_api.
# The docstring above is each subcommand's --help description.


def _token() -> str | None:
    return os.environ.get("GITHUB_TOKEN") or os.environ.get("GH_TOKEN")


def register(sub: Any) -> None:
    register_check(sub)
    register_jitconfig(sub)


def register_check(sub: Any) -> None:
    p = sub.add_parser("check-github", help="check the GitHub settings the release trust boundary relies on",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", default=os.environ.get("GITHUB_REPOSITORY"), help="OWNER/NAME (default: $GITHUB_REPOSITORY)")
    p.add_argument("--org", help="organisation that holds the runner groups (default: the repository's owner)")
    p.add_argument("--api-url", default=os.environ.get("GITHUB_API_URL", DEFAULT_API))
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.set_defaults(handler=handle_check)


def handle_check(args: argparse.Namespace) -> int:
    if not args.repo:
        raise InvalidInput("--repo OWNER/NAME is required (or set GITHUB_REPOSITORY)")
    token = _token()
    if not token:
        print("warning: no GITHUB_TOKEN/GH_TOKEN in the environment: most settings will be UNKNOWN", file=sys.stderr)
    checker = Checker(GitHubApi(args.api_url, token), args.repo, args.org)
    findings = checker.run()
    if args.json:
        print(json.dumps([f.__dict__ for f in findings], indent=2))
    else:
        for line in report_lines(findings):
            print(line)
    return 0 if findings and all(f.passed for f in findings) else 1


def register_jitconfig(sub: Any) -> None:
    p = sub.add_parser("runner-jitconfig", help="mint a single-job runner configuration (pipe it to register_runner.sh --jit)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--org", required=True, help="organisation that holds the runner group")
    p.add_argument("--group", required=True, help="runner group, e.g. hailo-builder")
    p.add_argument("--label", required=True, choices=sorted(RUNNER_WORKFLOWS))
    p.add_argument("--name", required=True, help="runner name, e.g. builder01-hailo-builder")
    p.add_argument("--api-url", default=os.environ.get("GITHUB_API_URL", DEFAULT_API))
    p.set_defaults(handler=handle_jitconfig)


def handle_jitconfig(args: argparse.Namespace) -> int:
    token = _token()
    if not token:
        raise InvalidInput("set GITHUB_TOKEN (organisation self-hosted runners: write) in the environment")
    if sys.stdout.isatty():
        raise InvalidInput("the JIT configuration is a credential: pipe it into runner/register_runner.sh --jit")
    api = GitHubApi(args.api_url, token)
    try:
        config = generate_jitconfig(api, org=args.org, group=args.group, label=args.label, name=args.name)
    except ApiError as exc:
        print(f"hailo-release: error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(config + "\n")
    print(f"minted a JIT configuration for runner {args.name} in group {args.group} ({args.org})", file=sys.stderr)
    return 0
