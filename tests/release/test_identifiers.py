import datetime as dt
import shutil
import subprocess

import pytest

from release.errors import InvalidIdentifier
from release.identifiers import ContinuityId, DeviceName, ReleaseTag


@pytest.mark.parametrize("tag", ["v1.0.0", "2026.11.22-rc1", "build_42", "A" * 128])
def test_valid_tags(tag):
    assert ReleaseTag(tag).value == tag


@pytest.mark.parametrize(
    ("tag", "fragment"),
    [
        ("", "empty"),
        ("v1;rm -rf /", "forbidden characters"),
        ("v1$(id)", "forbidden characters"),
        ("a/b", "forbidden characters"),
        ("v1..2", "'..'"),
        ("-v1", "must start"),
        (".hidden", "must start"),
        ("A" * 129, "at most 128"),
        ("v1 2", "forbidden characters"),
        ("v1\n", "forbidden characters"),
        ("current", "reserved"),
        ("committed", "reserved"),  # the device agent's pointer names are reserved here too
        ("last-known-good", "reserved"),
    ],
)
def test_invalid_tags_say_why(tag, fragment):
    with pytest.raises(InvalidIdentifier, match=None) as exc:
        ReleaseTag(tag)
    assert fragment in str(exc.value)


def test_continuity_id_parses_fields():
    cid = ContinuityId.parse("ADR-0007-hailo-docker-2025-08-31")
    assert (cid.number, cid.slug, cid.date) == (7, "hailo-docker", dt.date(2025, 8, 31))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("ADR-0007-hailo-docker-2025-02-30", "not a real calendar date"),
        ("ADR-7-hailo-docker-2025-08-31", "malformed"),
        ("ADR-0007-Hailo-docker-2025-08-31", "malformed"),
        ("ADR-0007--2025-08-31", "malformed"),
        ("ADR-0007-hailo;id-2025-08-31", "malformed"),
        ("ADR-0000-hailo-2025-08-31", "start at 0001"),
        ("adr-0007-hailo-2025-08-31", "malformed"),
    ],
)
def test_bad_continuity_ids(text, fragment):
    with pytest.raises(InvalidIdentifier) as exc:
        ContinuityId.parse(text)
    assert fragment in str(exc.value)
    assert "ADR-" in str(exc.value)


def test_find_in_pr_title():
    assert ContinuityId.find_in("feat(runtime): ADR-0007-hailo-docker-2025-08-31 sidecar").number == 7
    with pytest.raises(InvalidIdentifier, match="no continuity ID"):
        ContinuityId.find_in("fix typo")
    with pytest.raises(InvalidIdentifier, match="several"):
        ContinuityId.find_in("ADR-0001-a-2025-01-01 and ADR-0002-b-2025-01-02")


def test_run_id_component_is_safe():
    cid = ContinuityId.parse("ADR-0007-hailo-docker-2025-08-31")
    assert cid.run_id("gh-1234-1") == "ADR-0007-hailo-docker-2025-08-31__gh-1234-1"
    with pytest.raises(InvalidIdentifier):
        cid.run_id("x;y")


@pytest.mark.parametrize("name", ["Pi", "pi_1", "-pi", "", "a" * 64, "pi.lab"])
def test_bad_device_names(name):
    with pytest.raises(InvalidIdentifier):
        DeviceName(name)


def test_good_device_name():
    assert str(DeviceName("pi-lab-01")) == "pi-lab-01"


# --- issue 13: parsing holes ------------------------------------------------------------------

import json  # noqa: E402
import os.path  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import urllib.parse  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from release.identifiers import (  # noqa: E402
    AIRFLOW_RUN_ID_MAX_LEN,
    CONTINUITY_BODY,
    CONTINUITY_ID_MAX_LEN,
    RUN_ID_MAX_LEN,
    RUN_SUFFIX_MAX_LEN,
    SLUG_MAX_LEN,
    TAG_BODY,
    anchor_schema_patterns,
    json_schema_pattern,
)

# OCI distribution spec, "tag" grammar (content-management / pulling manifests section).
OCI_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}", re.ASCII)
# Airflow's default [scheduler] allowed_run_id_pattern, and its run_id column length.
AIRFLOW_RUN_ID = re.compile(r"[A-Za-z0-9_.~:+-]+", re.ASCII)


@pytest.mark.parametrize(
    "text",
    [
        "ADR-\u0660\u0660\u0660\u0667-hailo-2025-08-31",  # Arabic-Indic digits
        "ADR-\uff10\uff10\uff10\uff17-hailo-2025-08-31",  # full-width digits
        "ADR-0007-hailo-\u0662\u0660\u0662\u0665-08-31",
        "ADR-0007-hail\u00f6-2025-08-31",
        "ADR-0007-hailo-2025-08-31\n",
    ],
)
def test_continuity_grammar_is_ascii_only(text):
    with pytest.raises(InvalidIdentifier):
        ContinuityId.parse(text)
    if not text.endswith("\n"):  # in free text a newline is just a boundary
        with pytest.raises(InvalidIdentifier):
            ContinuityId.find_in(f"feat: {text}")


@pytest.mark.parametrize("value", ["v\u0661", "\uff11.0", "pi-\u0661"])
def test_tag_and_device_grammars_are_ascii_only(value):
    with pytest.raises(InvalidIdentifier):
        ReleaseTag(value)
    with pytest.raises(InvalidIdentifier):
        DeviceName(value)


@pytest.mark.parametrize(
    "title",
    [
        "xADR-0007-hailo-docker-2025-08-31",
        "ADR-0007-hailo-docker-2025-08-311",
        "ADR-0007-hailo-docker-2025-08-31-extra",
        "9ADR-0007-hailo-docker-2025-08-31",
        "_ADR-0007-hailo-docker-2025-08-31",
        "\u00e9ADR-0007-hailo-docker-2025-08-31",
    ],
)
def test_find_in_needs_word_boundaries(title):
    with pytest.raises(InvalidIdentifier, match="no continuity ID"):
        ContinuityId.find_in(title)


@pytest.mark.parametrize(
    "title",
    ["ADR-0007-hailo-docker-2025-08-31", "feat: ADR-0007-hailo-docker-2025-08-31 sidecar",
     "(ADR-0007-hailo-docker-2025-08-31)", "ADR-0007-hailo-docker-2025-08-31: sidecar", "[ADR-0007-hailo-docker-2025-08-31]"],
)
def test_find_in_accepts_punctuation_boundaries(title):
    assert ContinuityId.find_in(title).value == "ADR-0007-hailo-docker-2025-08-31"


def test_find_in_refuses_option_lookalikes_and_huge_text():
    for text in ("-h", "--help", "--search"):
        with pytest.raises(InvalidIdentifier, match="no continuity ID"):
            ContinuityId.find_in(text)
    with pytest.raises(InvalidIdentifier, match="at most"):
        ContinuityId.find_in("ADR-0007-a-2025-08-31 " + "x" * 5000)


def test_slug_length_cap_keeps_run_ids_short():
    longest = f"ADR-0007-{'a' * SLUG_MAX_LEN}-2025-08-31"
    assert len(longest) == CONTINUITY_ID_MAX_LEN
    cid = ContinuityId.parse(longest)
    run_id = cid.run_id("ci-" + "9" * (RUN_SUFFIX_MAX_LEN - 3))
    assert len(run_id) == RUN_ID_MAX_LEN <= AIRFLOW_RUN_ID_MAX_LEN
    assert len("airflow:" + run_id) <= 200  # ReleaseRequest.triggered_by
    with pytest.raises(InvalidIdentifier, match="at most 100"):
        ContinuityId.parse(f"ADR-0007-{'a' * (SLUG_MAX_LEN + 1)}-2025-08-31")
    with pytest.raises(InvalidIdentifier, match="at most 100"):
        ContinuityId.parse(f"ADR-0007-{'a' * 300}-2025-08-31")  # the 300-character slug
    with pytest.raises(InvalidIdentifier, match="suffix"):
        cid.run_id("x" * (RUN_SUFFIX_MAX_LEN + 1))


def test_json_schema_pattern_has_no_trailing_newline_hole():
    pattern = json_schema_pattern(TAG_BODY)
    assert re.search(pattern, "v1")
    for bad in ("v1\n", "\nv1", "v1\n\n", "v1\nv2"):
        assert re.search(pattern, bad) is None, bad
    # The naive form shows the hole this closes.
    assert re.search(f"^{TAG_BODY}$", "v1\n")


def test_anchor_schema_patterns_rewrites_only_anchored_patterns():
    schema = {"a": {"pattern": "^x$"}, "b": [{"pattern": r"\.\."}], "c": {"pattern": {"pattern": "^y$"}}}
    out = anchor_schema_patterns(schema)
    assert out["a"]["pattern"] == json_schema_pattern("x")
    assert out["b"][0]["pattern"] == r"\.\."
    assert out["c"]["pattern"]["pattern"] == json_schema_pattern("y")


def _emitted_schemas():
    from release.schemas import DATA_DIR, json_schema, schema_models

    out = {}
    for name, model in schema_models().items():
        out[name] = json.loads((DATA_DIR / name).read_text())
        out[model.__name__] = json_schema(model)
    return out


def _patterns(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                yield value
            else:
                yield from _patterns(value)
    elif isinstance(node, list):
        for value in node:
            yield from _patterns(value)


def test_every_emitted_schema_pattern_refuses_a_trailing_newline():
    checked = 0
    for name, schema in _emitted_schemas().items():
        for pattern in _patterns(schema):
            if not pattern.startswith("^"):
                continue  # unanchored patterns (e.g. "not": "\\.\\.") forbid a substring
            assert pattern.endswith(r"$(?!\n)"), f"{name}: {pattern}"
            checked += 1
            body = pattern[len("^(?:"):-len(r")$(?!\n)")]
            for sample in ("sample", "0" * 64, "sha256:" + "0" * 64, "v1", "ADR-0007-a-2025-08-31", "pi-lab-01", "unknown"):
                if re.fullmatch(body, sample):
                    assert re.search(pattern, sample), (name, pattern, sample)
                    assert re.search(pattern, sample + "\n") is None, (name, pattern, sample)
    assert checked >= 8


def test_dag_params_schema_refuses_trailing_newlines_with_jsonschema():
    jsonschema = pytest.importorskip("jsonschema")  # what Airflow's Param uses
    from release.request import ReleaseRequest
    from release.schemas import param_specs

    schema = {"type": "object", "properties": param_specs(ReleaseRequest)}
    good = {"continuity_id": "ADR-0007-a-2025-08-31", "release_tag": "v1", "device": "pi-lab-01",
            "config_version": "cfg-1", "onnx_location": "sample"}
    jsonschema.validate(good, schema)
    for key, value in good.items():
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**good, key: value + "\n"}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**good, "continuity_id": f"ADR-0007-{'a' * 300}-2025-08-31"}, schema)


def test_emitted_patterns_compile_as_ecma_regexes(tmp_path):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the ECMA-262 engine check needs it")
    patterns = sorted({p for s in _emitted_schemas().values() for p in _patterns(s)})
    script = tmp_path / "check.js"
    script.write_text(
        "const ps = JSON.parse(require('fs').readFileSync(0, 'utf8'));\n"
        "const out = ps.map(p => { const r = new RegExp(p, 'u'); return [r.test('v1\\n'), r.test('ADR-0007-a-2025-08-31\\n')]; });\n"
        "console.log(JSON.stringify(out));\n"
    )
    res = subprocess.run([node, str(script)], input=json.dumps(patterns), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert all(not hit for pair in json.loads(res.stdout) for hit in pair)


def _assert_safe_everywhere(value: str) -> None:
    # Path segment: one component, stays inside its parent, nothing special.
    assert value not in {"", ".", ".."} and "/" not in value and "\\" not in value and "\x00" not in value
    assert ".." not in value and not value.startswith(("-", "."))
    assert os.path.normpath(os.path.join("/store", value)) == f"/store/{value}"
    # No shell metacharacter, no URL escaping needed (REST paths), no whitespace.
    assert shlex.quote(value) == value
    assert urllib.parse.quote(value, safe="") == value
    assert value.isascii() and value.isprintable() and not any(ch.isspace() for ch in value)


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.from_regex(re.compile(TAG_BODY, re.ASCII), fullmatch=True), st.text(max_size=140)))
def test_whatever_the_tag_grammar_accepts_is_safe(text):
    try:
        tag = ReleaseTag(text).value
    except InvalidIdentifier:
        return
    _assert_safe_everywhere(tag)
    assert OCI_TAG.fullmatch(tag)


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.from_regex(re.compile(r"[a-z0-9][a-z0-9-]{0,70}", re.ASCII), fullmatch=True), st.text(max_size=70)))
def test_whatever_the_device_grammar_accepts_is_safe(text):
    try:
        name = DeviceName(text).value
    except InvalidIdentifier:
        return
    _assert_safe_everywhere(name)
    assert OCI_TAG.fullmatch(name)


_SLUGGY = st.from_regex(re.compile(CONTINUITY_BODY.replace("[0-9]{4}-[0-9]{2}-[0-9]{2}", "20[0-9]{2}-0[1-9]-[0-2][1-9]"),
                                   re.ASCII), fullmatch=True)


@settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.one_of(_SLUGGY, st.text(max_size=160)),
       st.one_of(st.from_regex(re.compile(TAG_BODY, re.ASCII), fullmatch=True), st.text(max_size=80)))
def test_whatever_the_continuity_grammar_accepts_makes_safe_run_ids(text, suffix):
    try:
        cid = ContinuityId.parse(text)
    except InvalidIdentifier:
        return
    assert len(cid.value) <= CONTINUITY_ID_MAX_LEN and cid.value.isascii()
    _assert_safe_everywhere(cid.value)
    assert OCI_TAG.fullmatch(cid.value)
    assert ContinuityId.find_in(f"feat: {cid.value} (#12)") == cid
    try:
        run_id = cid.run_id(suffix)
    except InvalidIdentifier:
        return
    assert len(run_id) <= RUN_ID_MAX_LEN <= AIRFLOW_RUN_ID_MAX_LEN
    assert AIRFLOW_RUN_ID.fullmatch(run_id)
    _assert_safe_everywhere(run_id)


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(max_size=300))
def test_find_in_only_returns_what_parse_accepts(text):
    try:
        cid = ContinuityId.find_in(text)
    except InvalidIdentifier:
        return
    assert ContinuityId.parse(cid.value) == cid and cid.value in text
