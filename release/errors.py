"""The one error hierarchy of the release library.

Every error the library raises derives from :class:`ReleaseError`. The CLI catches
that base alone and maps :attr:`ReleaseError.exit_code` to the process exit code, so
callers can tell bad input (2) from an integrity failure (3) from a failed step (1).
Airflow operators re-raise them with the message intact.
"""

from __future__ import annotations


class ReleaseError(Exception):
    """Base of every error raised by :mod:`release`."""

    exit_code: int = 1


class InvalidInput(ReleaseError):
    """The caller gave something malformed: fix the input, not the system."""

    exit_code = 2


class InvalidIdentifier(InvalidInput):
    """A release tag, continuity ID, device name or similar failed its grammar."""


class ConfigError(InvalidInput):
    """A setting (environment variable or file) has an invalid value."""


class InvalidModel(InvalidInput):
    """The ONNX model failed validation."""


class ManifestError(InvalidInput):
    """A release manifest is malformed, of an unknown schema version, or incomplete."""


class IntegrityError(ReleaseError):
    """A checksum or signature does not match: something was tampered with or corrupted."""

    exit_code = 3


class ArtifactExists(ReleaseError):
    """A published artifact would be overwritten; published releases are immutable."""

    exit_code = 4


class ArtifactNotFound(ReleaseError):
    """An artifact, release or manifest that was asked for does not exist."""

    exit_code = 4


class StepFailed(ReleaseError):
    """An external step (DFC, docker, registry, ssh, device) failed."""


class ToolNotFound(StepFailed):
    """An external tool the step needs is not installed or not on PATH."""


class TransitionError(ReleaseError):
    """A release state change that the transition table does not allow."""


class LockHeld(ReleaseError):
    """Another release holds the lock on this device."""

    exit_code = 5


class RefusedForProduction(ReleaseError):
    """The artifact is fine for dev but must never reach a production target (e.g. placeholder HEF)."""

    exit_code = 6
