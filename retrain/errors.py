"""Error types that map to the CLI's exit codes, so callers never parse messages."""

from __future__ import annotations


class RetrainInputError(Exception):
    """Invalid input data or config: nothing was changed (exit code 2)."""


class ConfigError(RetrainInputError):
    """params.yaml or an override is invalid."""


class DataError(RetrainInputError):
    """The input data is unreadable or breaks the declared schema."""


class DataValidationError(DataError):
    """The data gate (Great Expectations) failed; carries every failed check."""

    def __init__(self, message: str, failures: list[dict[str, object]]) -> None:
        super().__init__(message)
        self.failures = failures
