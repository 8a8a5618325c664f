"""One root exception for freshrank, split by what the caller can do about it."""

from __future__ import annotations


class FreshrankError(Exception):
    """Root of every error freshrank raises on purpose."""


class ConfigError(FreshrankError):
    """A setting or argument is invalid; retrying will not help."""


class DependencyError(FreshrankError):
    """A remote component (broker, PostgreSQL, Triton) failed; retrying may help."""


class PermanentError(FreshrankError):
    """A remote component refused a request for good (a constraint, bad data); retrying will not help."""


class RejectedRequest(PermanentError):
    """A remote refused this one request for good (bad data, a violated constraint); others may pass."""


class CheckFailed(FreshrankError):
    """A candidate version failed a pre-publish check or the gate; it must not be served."""


class LeaseLost(FreshrankError):
    """Another updater became the writer for this model; this one must stop publishing."""


class TrainingFailed(FreshrankError):
    """A training step raised; the updater stops and a restart resumes from the last checkpoint."""
