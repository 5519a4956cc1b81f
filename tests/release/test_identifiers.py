import datetime as dt

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
