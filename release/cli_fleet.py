"""`hailo-release rollout …` and `hailo-release fleet …`: the fleet rollout without Airflow.

  rollout start --tag T --plan FILE [--group G | --selector k=v[,k=v]] [--production] [--no-wait]
                             (no --group/--selector: the plan file's `target`)
  rollout resume ID          continue after a pause, an approval or an orchestrator restart
  rollout approve ID --wave N
  rollout status ID          the rollout report (from the store's history)
  rollout halt ID            abort now: every touched device back on its own last-known-good
  fleet status [--group G | --selector k=v]   exit 3 when a device disagrees with the store
  fleet rollback --group G   (also: `hailo-release rollback --group G`) verified per device

Exit codes (rollout): 0 completed; 10 halted (touched devices restored); 12 waiting (approval or
pause: `rollout resume`); otherwise those of the error hierarchy (2 bad input, 3 disagreement, …).
"""

from __future__ import annotations

import argparse
import getpass
import json
import signal
from pathlib import Path
from typing import Any

EXIT_DISAGREE = 3


def _env_and_store() -> tuple[Any, Any]:
    from release.cli import _env_and_store as env_and_store  # the CLI's one store selection

    return env_and_store()


def _actor() -> str:
    return f"cli:{getpass.getuser()}"


def _selector(args: argparse.Namespace) -> Any:
    from release.devices import Selector

    return Selector.parse(getattr(args, "group", None), getattr(args, "selector", None))


def _terminate_as_exit() -> None:
    def _terminated(signum: int, _frame: object) -> None:
        # SIGTERM unwinds like an error: devices under way restore themselves (fail-safe or lease).
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminated)


def _print_report(report: Any) -> int:
    from release.progress import Progress
    from release.rollout_run import exit_code

    print(json.dumps(report.as_dict(), indent=2, default=str))
    code = exit_code(report)
    Progress().say(f"rollout {report.rollout_id}: {report.state} (exit {code}); report {report.report_uri}")
    return code


def _cmd_start(args: argparse.Namespace) -> int:
    from release.errors import InvalidInput
    from release.progress import Progress
    from release.rollout import start_rollout
    from release.rollout_plan import load_plan, load_target
    from release.rollout_run import run_rollout

    env, store = _env_and_store()
    plan = load_plan(args.plan)
    selector = _selector(args) if (args.group or args.selector) else load_target(args.plan)
    if selector is None:
        raise InvalidInput(f"no target: give --group or --selector, or a target in {args.plan}")
    _terminate_as_exit()
    rollout_id = start_rollout(env, store, args.tag, plan, selector, actor=_actor(), production=args.production)
    progress = Progress()
    progress.say(f"rollout {rollout_id} started")
    report = run_rollout(env, store, rollout_id, actor=_actor(), say=progress.say, wait_for_pause=not args.no_wait)
    return _print_report(report)


def _cmd_resume(args: argparse.Namespace) -> int:
    from release.progress import Progress
    from release.rollout_run import run_rollout

    env, store = _env_and_store()
    _terminate_as_exit()
    progress = Progress()
    report = run_rollout(env, store, args.rollout_id, actor=_actor(), say=progress.say, wait_for_pause=not args.no_wait)
    return _print_report(report)


def _cmd_approve(args: argparse.Namespace) -> int:
    from release.rollout import approve

    _, store = _env_and_store()
    approve(store, args.rollout_id, args.wave, actor=_actor())
    print(json.dumps({"rollout_id": args.rollout_id, "approved_wave": args.wave,
                      "next": f"hailo-release rollout resume {args.rollout_id}"}))
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from release.rollout_report import build_report

    _, store = _env_and_store()
    print(json.dumps(build_report(store, args.rollout_id).as_dict(), indent=2, default=str))
    return 0


def _cmd_halt(args: argparse.Namespace) -> int:
    from release.rollout import halt
    from release.rollout_report import build_report, write_report

    env, store = _env_and_store()
    halt(env, store, args.rollout_id, actor=_actor(), reason=args.reason)
    return _print_report(write_report(store, build_report(store, args.rollout_id)))


def _cmd_fleet_status(args: argparse.Namespace) -> int:
    from release.fleet import fleet_status

    env, store = _env_and_store()
    selector = _selector(args) if (args.group or args.selector) else None
    rows = fleet_status(env, store, selector)
    print(json.dumps([r.as_dict() for r in rows], indent=2, default=str))
    return 0 if all(r.agrees for r in rows) else EXIT_DISAGREE


def _cmd_group_rollback(args: argparse.Namespace) -> int:
    from release.fleet import rollback_group
    from release.progress import Progress

    env, store = _env_and_store()
    results = rollback_group(env, store, _selector(args), to=args.to, reason=args.reason, triggered_by=_actor())
    progress = Progress()
    for r in results:
        took = f"{r.time_to_healthy_s:.1f}s to healthy" if r.time_to_healthy_s is not None else "not rolled back"
        progress.say(f"{r.device}: {r.rolled_back_to or '-'} ({took}; {'verified' if r.verified else 'NOT verified'}: {r.detail})")
    print(json.dumps([vars(r) for r in results], indent=2, default=str))
    return 0 if results and all(r.ok and r.verified for r in results) else 1


def _add_target(p: argparse.ArgumentParser, required: bool) -> None:
    group = p.add_mutually_exclusive_group(required=required)
    group.add_argument("--group", help="devices of this inventory group")
    group.add_argument("--selector", help="label selector, key=value[,key=value]")


def _hook_rollback(sub: Any) -> None:
    """`hailo-release rollback --group G`: the on-call rollback, for a whole group at once."""
    parser = sub.choices.get("rollback")
    if parser is None:
        return
    for action in parser._actions:  # --device becomes one of --device / --group
        if action.dest == "device":
            action.required = False
    parser.add_argument("--group", help="roll back every enrolled device of this group (verified per device)")
    single = parser.get_default("handler")

    def dispatch(args: argparse.Namespace) -> int:
        from release.errors import InvalidInput

        if args.group and args.device:
            raise InvalidInput("give --device or --group, not both")
        if args.group:
            args.selector = None
            return _cmd_group_rollback(args)
        if not args.device:
            raise InvalidInput("rollback needs --device or --group")
        return int(single(args))

    parser.set_defaults(handler=dispatch)


def register(sub: Any) -> None:
    rollout = sub.add_parser("rollout", help="progressive fleet rollout in waves (no Airflow needed)",
                             description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    rsub = rollout.add_subparsers(dest="rollout_command", required=True, metavar="ACTION")
    p = rsub.add_parser("start", help="start a rollout of a promoted release and run it")
    p.add_argument("--tag", required=True, help="the promoted release to roll out")
    p.add_argument("--plan", type=Path, required=True,
                   help="rollout plan YAML (docs/rollout.example.yaml, or the repository's release-plan.yaml)")
    _add_target(p, required=False)  # default: the plan file's target
    p.add_argument("--production", action="store_true", help="refuse devices without pinned host keys")
    p.add_argument("--no-wait", action="store_true", help="return at a pause instead of sleeping through it")
    p.set_defaults(handler=_cmd_start)
    for name, helptext, handler in (("resume", "continue a paused, waiting or interrupted rollout", _cmd_resume),
                                    ("status", "the rollout report, from the store's history", _cmd_status),
                                    ("halt", "abort: touched devices back on their own last-known-good", _cmd_halt)):
        p = rsub.add_parser(name, help=helptext)
        p.add_argument("rollout_id")
        if name == "resume":
            p.add_argument("--no-wait", action="store_true")
        if name == "halt":
            p.add_argument("--reason", default="halted by on-call")
        p.set_defaults(handler=handler)
    p = rsub.add_parser("approve", help="approve a wave that waits for a human")
    p.add_argument("rollout_id")
    p.add_argument("--wave", type=int, required=True)
    p.set_defaults(handler=_cmd_approve)

    fleet = sub.add_parser("fleet", help="the fleet: status per device, group rollback")
    fsub = fleet.add_subparsers(dest="fleet_command", required=True, metavar="ACTION")
    p = fsub.add_parser("status", help="release, last-known-good, lease, last gate p95 per device (exit 3: disagreement)")
    _add_target(p, required=False)
    p.set_defaults(handler=_cmd_fleet_status)
    p = fsub.add_parser("rollback", help="roll back a whole group, verified per device, time to healthy per device")
    _add_target(p, required=True)
    p.add_argument("--to", default="previous", help="release tag, or 'previous' (each device's own; default)")
    p.add_argument("--reason", default="on-call group rollback")
    p.set_defaults(handler=_cmd_group_rollback)
    _hook_rollback(sub)
