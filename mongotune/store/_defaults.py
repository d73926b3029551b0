"""Lease defaults shared by study and trial documents, importable without pymongo (the CLI checks
options against them before anything heavy loads)."""

DEFAULT_LEASE_S = 60.0
DEFAULT_MAX_ATTEMPTS = 3
