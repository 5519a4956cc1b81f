"""`hailo-release`: a thin command-line interface over the release library.

Exit codes: 0 success (`run`: promoted); 1 a step failed (`run`: failed, device restored);
2 bad input (malformed model, tag, ID, setting); 3 integrity failure (checksum or signature
mismatch; `status`: device and store disagree); 4 artifact exists / not found; 5 device locked by
another release; 6 refused for production; 10 rolled back; 11 held (gate inconclusive);
70 internal error.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from release.errors import ReleaseError
from release.progress import Progress

# Subcommands that live in their own modules: each exposes register(subparsers).
COMMAND_MODULES: tuple[str, ...] = ("release.cli_trigger", "release.github_setup", "release.cli_fleet")

EXIT_INTERNAL = 70
Handler = Callable[[argparse.Namespace], int]


def _cmd_validate(args: argparse.Namespace) -> int:
    from release.config import load_settings
    from release.onnx_validation import validate_onnx, write_report

    settings = load_settings()
    report = validate_onnx(
        args.model, num_motifs=settings.num_motifs, opset_range=settings.opset_range, window=settings.window_shape
    )
    if args.report:
        write_report(report, args.report)
    print(report.to_json() if args.json else f"OK: {args.model} (sha256 {report.sha256}, opset {report.opset})")
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _cmd_checksum(args: argparse.Namespace) -> int:
    from release.checksums import write_sha256sum

    out = write_sha256sum([Path(f) for f in args.files], args.output)
    print(out.read_text(encoding="utf-8"), end="")
    return 0


def _cmd_verify_checksums(args: argparse.Namespace) -> int:
    from release.checksums import verify_sha256sum

    for path in verify_sha256sum(args.sumfile):
        print(f"{path}: OK")
    return 0


def _cmd_manifest_schema(args: argparse.Namespace) -> int:
    from release.manifest import write_json_schema

    write_json_schema(args.output)
    print(args.output)
    return 0


def _cmd_manifest_check(args: argparse.Namespace) -> int:
    from release.manifest import ReleaseManifest

    manifest = ReleaseManifest.load(args.manifest)
    print(f"OK: release {manifest.release_tag} #{manifest.release_counter} hef_sha256={manifest.hef.hef_sha256}")
    return 0


def _cmd_check_continuity_id(args: argparse.Namespace) -> int:
    from release.identifiers import ContinuityId

    cid = ContinuityId.find_in(args.text) if args.search else ContinuityId.parse(args.text)
    print(json.dumps({"continuity_id": cid.value, "adr": cid.number, "slug": cid.slug, "date": cid.date.isoformat()}))
    return 0


def _env_and_store() -> tuple[Any, Any]:
    """The local store under HAILO_ARTIFACT_ROOT, or HAILO_ARTIFACT_STORE=gs://bucket[/root] read and
    written directly (the ``gcs`` extra; credentials the standard google-cloud way)."""
    from release.gcs_store import GcsArtifactStore, is_gcs_url
    from release.pipeline_env import PipelineEnv
    from release.store import LocalArtifactStore

    env = PipelineEnv.from_env()
    location = env.artifact_store or ""
    if is_gcs_url(location):
        return env, GcsArtifactStore.from_url(location)
    return env, LocalArtifactStore(env.store_root)


def _cmd_rollback(args: argparse.Namespace) -> int:
    import getpass

    from release.operations import rollback_device

    env, store = _env_and_store()
    with Progress().step(f"rollback {args.device} to {args.to}"):
        result = rollback_device(
            env, store, device=args.device, to=args.to, reason=args.reason,
            triggered_by=f"cli:{getpass.getuser()}",
        )
    print(json.dumps(result, indent=2))
    return 0


def _cmd_decide(args: argparse.Namespace) -> int:
    import getpass

    from release.operations import decide_held

    env, store = _env_and_store()
    with Progress().step(f"{args.decision} held release {args.tag} on {args.device}"):
        result = decide_held(
            env, store, device=args.device, tag=args.tag, decision=args.decision, reason=args.reason,
            decided_by=f"cli:{getpass.getuser()}",
        )
    print(json.dumps(result, indent=2))
    return 0


def _cmd_attest(args: argparse.Namespace) -> int:
    from release.bundle_signing import KeyBundleSigner, KeylessBundleSigner
    from release.operations import attest_release

    env, store = _env_and_store()
    # Keyless unless a key is named: in GitHub Actions that is the workflow's OIDC identity; with no
    # identity KeylessBundleSigner refuses up front instead of opening a browser login.
    signer = KeyBundleSigner(args.key) if args.key else KeylessBundleSigner(use_staging=args.staging)
    with Progress().step(f"attest release {args.tag}"):
        result = attest_release(env, store, tag=args.tag, output_dir=args.output, signer=signer)
    print(json.dumps(result, indent=2))
    return 0


def _gate_overrides(items: list[str]) -> dict[str, float]:
    from release.errors import InvalidInput

    overrides: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            overrides[key] = float(value) if sep else float("nan")
        except ValueError:
            raise InvalidInput(f"--gate-override {item!r}: expected KEY=NUMBER") from None
        if not sep:
            raise InvalidInput(f"--gate-override {item!r}: expected KEY=NUMBER")
    return overrides


def _cmd_run(args: argparse.Namespace) -> int:
    import signal

    from release.pipeline import report, run_all
    from release.request import ReleaseRequest

    env, store = _env_and_store()
    req = ReleaseRequest.parse(
        {
            "continuity_id": args.continuity_id, "release_tag": args.tag, "onnx_location": args.onnx,
            "config_version": args.config_version, "device": args.device, "production": args.production,
            "triggered_by": "cli", "gate_overrides": _gate_overrides(args.gate_override),
        }
    )

    def _terminated(signum: int, _frame: object) -> None:
        # SIGTERM (systemd stop, CI cancel) unwinds like an error, so the fail-safe still runs.
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminated)
    progress = Progress()
    outcome = run_all(req, env, store, say=progress.say)
    summary = report(req, store)
    print(json.dumps(summary, indent=2))
    progress.say(f"release {req.release_tag}: {outcome.state.value} (exit {outcome.exit_code})")
    return outcome.exit_code


def _cmd_status(args: argparse.Namespace) -> int:
    from release.operations import status

    env, store = _env_and_store()
    result = status(env, store, args.device)
    print(json.dumps(result.as_dict(), indent=2, default=str))
    return 0 if result.agrees else 3


def _cmd_reconcile(args: argparse.Namespace) -> int:
    import getpass

    from release.operations import reconcile, status

    env, store = _env_and_store()
    result = reconcile(env, store, args.device, actor=f"cli:{getpass.getuser()}")
    after = status(env, store, args.device)
    print(json.dumps({**result, "status": after.as_dict()}, indent=2, default=str))
    return 0 if after.agrees else 3


def _cmd_history(args: argparse.Namespace) -> int:
    from release.history import History

    _, store = _env_and_store()
    history = History(store)
    records = history.for_device(args.device) if args.device else history.records()
    for record in records:
        if args.tag and record.release_tag != args.tag:
            continue
        print(record.model_dump_json())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hailo-release",
        description="Release orchestrator for edge ML models on Raspberry Pi 5 + Hailo-8.",
        epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="validate an ONNX model for Hailo-8 (checker, shapes, ops, smoke run)")
    p.add_argument("model", type=Path, help="path to the .onnx file")
    p.add_argument("--report", type=Path, help="write the validation report JSON here")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.set_defaults(handler=_cmd_validate)

    p = sub.add_parser("checksum", help="write a sha256sum-format file for artifacts")
    p.add_argument("files", nargs="+", help="files to checksum (names relative to the output's directory)")
    p.add_argument("-o", "--output", type=Path, required=True, help="sha256sum file to write")
    p.set_defaults(handler=_cmd_checksum)

    p = sub.add_parser("verify-checksums", help="verify a sha256sum-format file (like sha256sum -c)")
    p.add_argument("sumfile", type=Path)
    p.set_defaults(handler=_cmd_verify_checksums)

    p = sub.add_parser("manifest-schema", help="write the release manifest JSON Schema")
    p.add_argument("-o", "--output", type=Path, default=Path("release/data/manifest.schema.json"))
    p.set_defaults(handler=_cmd_manifest_schema)

    p = sub.add_parser("manifest-check", help="load and validate a release manifest")
    p.add_argument("manifest", type=Path)
    p.set_defaults(handler=_cmd_manifest_check)

    p = sub.add_parser("check-continuity-id", help="validate a continuity ID (or find one in a PR title)")
    p.add_argument("text", help="the ID, or free text with --search")
    p.add_argument("--search", action="store_true", help="find the ID inside free text such as a PR title")
    p.set_defaults(handler=_cmd_check_continuity_id)

    p = sub.add_parser(
        "rollback",
        help="on-call: roll a device back to a tag or to its last-known-good release (no Airflow needed)",
    )
    p.add_argument("--device", required=True, help="device name from the inventory (HAILO_DEVICES_FILE)")
    p.add_argument("--to", default="previous", help="release tag, or 'previous' (default)")
    p.add_argument("--reason", default="on-call rollback", help="why: recorded in the ledger and the rollback manifest")
    p.set_defaults(handler=_cmd_rollback)

    p = sub.add_parser(
        "decide",
        help="answer a held release (inconclusive gate): approve promotes it, reject rolls the device back",
    )
    p.add_argument("decision", choices=["approve", "reject"])
    p.add_argument("--device", required=True, help="device the held canary runs on")
    p.add_argument("--tag", required=True, help="the held release tag")
    p.add_argument("--reason", required=True, help="why: recorded in the ledger and the decision manifest")
    p.set_defaults(handler=_cmd_decide)

    p = sub.add_parser(
        "attest",
        help="countersign a published release's bundle (keyless: the GitHub workflow's OIDC identity)",
    )
    p.add_argument("--tag", required=True, help="the published release tag")
    p.add_argument("--output", type=Path, required=True, help="directory for the signature and what it covers")
    p.add_argument("--key", type=Path, help="sign with this EC P-256 PEM key instead of keyless (offline)")
    p.add_argument("--staging", action="store_true", help="use sigstore's staging instance (testing)")
    p.set_defaults(handler=_cmd_attest)

    p = sub.add_parser("run", help="run the whole canary release without Airflow (same steps as the DAG)")
    p.add_argument("--tag", required=True, help="release tag")
    p.add_argument("--continuity-id", required=True)
    p.add_argument("--config-version", required=True)
    p.add_argument("--onnx", default="sample", help="'sample' or an absolute path to a .onnx")
    p.add_argument("--device", default="local")
    p.add_argument("--production", action="store_true", help="refuse placeholders, dev keys and skipped images")
    p.add_argument("--gate-override", action="append", default=[], metavar="KEY=NUMBER",
                   help="tighten the gate for this run (p95_ms, min_windows_per_s, max_error_rate, duration_s, "
                        "rate_windows_per_s, lease_margin_s, hold_lease_s); checked against the product limits")
    p.set_defaults(handler=_cmd_run)

    p = sub.add_parser(
        "status", help="what a device runs, its last-known-good and lease, beside the store's history (exit 3: they disagree)"
    )
    p.add_argument("--device", required=True)
    p.set_defaults(handler=_cmd_status)

    p = sub.add_parser(
        "reconcile", help="record what a device did on its own (lease expiry, commit kept) for the canary in flight"
    )
    p.add_argument("--device", required=True)
    p.set_defaults(handler=_cmd_reconcile)

    p = sub.add_parser("history", help="the release history from the store (every state change), as JSON lines")
    p.add_argument("--device", help="only this device's records (its ledger)")
    p.add_argument("--tag", help="only this release's records")
    p.set_defaults(handler=_cmd_history)

    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except ReleaseError as exc:
        print(f"hailo-release: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("hailo-release: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the CLI's last line of defence: report, never hide
        print(f"hailo-release: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    raise SystemExit(main())
