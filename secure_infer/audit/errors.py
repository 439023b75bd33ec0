"""Errors of the privacy audit, one tree (all are ``ValueError`` so the CLI prints them cleanly)::

ValueError
└── AuditError                 any audit failure the user can fix
    ├── AuditConfigError       invalid TOML file, unknown key, bad value or override
    ├── DataUnavailable        a data package is not installed or its files are missing
    ├── ModelMismatch          the target model does not fit the data (features, classes)
    └── BackendUnavailable     an optional engine (Ray) is requested but not installed
"""

from __future__ import annotations

__all__ = [
    "AuditConfigError",
    "AuditError",
    "BackendUnavailable",
    "DataUnavailable",
    "ModelMismatch",
]


class AuditError(ValueError):
    """Base class of every error the audit raises on bad input."""


class AuditConfigError(AuditError):
    """The audit configuration (TOML file or flags) is invalid."""


class DataUnavailable(AuditError):
    """A data set cannot be loaded from the package that ships it."""


class ModelMismatch(AuditError):
    """The target model's input dimension or class count does not fit the data."""


class BackendUnavailable(AuditError):
    """An optional execution backend is requested but cannot be used."""
