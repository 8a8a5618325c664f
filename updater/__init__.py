"""freshrank updater: Kafka events -> clean -> join -> batch -> learn -> checkpoint."""


class FreshrankError(Exception):
    """Root of every error freshrank raises on purpose."""


class ConfigError(FreshrankError):
    """A setting or argument is invalid; retrying will not help."""


class DependencyError(FreshrankError):
    """A remote component (broker, PostgreSQL, Triton) failed; retrying may help."""
