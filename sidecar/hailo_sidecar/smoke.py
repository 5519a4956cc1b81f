"""Smoke check of a running sidecar: /healthz, /readyz and the /infer contract.

    python -m hailo_sidecar.smoke http://127.0.0.1:9000 [--expect-hef-sha256 H] [--expect-config-version V]
Exit 0 when everything matches, 1 with the reasons otherwise. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import urllib.error
import urllib.request


def _get(url: str, timeout: float) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def check(base: str, expect_hef: str | None, expect_config: str | None, num_motifs: int, timeout: float) -> list[str]:
    problems: list[str] = []
    status, health = _get(f"{base}/healthz", timeout)
    if status != 200 or health.get("status") != "ok":
        problems.append(f"/healthz: status {status}, body {health}")
    if expect_hef and health.get("hef_sha256") != expect_hef:
        problems.append(f"/healthz hef_sha256 {health.get('hef_sha256')} != expected {expect_hef}")
    if expect_config and health.get("config_version") != expect_config:
        problems.append(f"/healthz config_version {health.get('config_version')} != expected {expect_config}")
    status, _ = _get(f"{base}/readyz", timeout)
    if status != 200:
        problems.append(f"/readyz: status {status}")
    window = [[math.sin(i * 0.1 + c) for c in range(9)] for i in range(100)]
    req = urllib.request.Request(
        f"{base}/infer", data=json.dumps({"x": window}).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            out = json.loads(resp.read())
    except (urllib.error.URLError, ValueError) as exc:
        return [*problems, f"/infer failed: {exc}"]
    for key, want in (("latent", 64), ("motif_scores", num_motifs)):
        values = out.get(key)
        if not isinstance(values, list) or len(values) != want:
            problems.append(f"/infer {key} has {len(values) if isinstance(values, list) else values!r} values, expected {want}")
            continue
        # orjson writes NaN/Inf as null: an answer with null or non-finite values is a failure, not a 200 to trust.
        bad = [i for i, v in enumerate(values) if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)]
        if bad:
            problems.append(f"/infer {key} has {len(bad)} non-finite or non-numeric values (first at index {bad[0]})")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url", help="base URL of the sidecar, e.g. http://127.0.0.1:9000")
    p.add_argument("--expect-hef-sha256")
    p.add_argument("--expect-config-version")
    p.add_argument("--num-motifs", type=int, default=12)
    p.add_argument("--timeout", type=float, default=5.0)
    args = p.parse_args(argv)
    try:
        problems = check(args.url.rstrip("/"), args.expect_hef_sha256, args.expect_config_version, args.num_motifs, args.timeout)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        problems = [f"cannot reach {args.url}: {exc}"]
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    if not problems:
        print(f"OK: {args.url}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
