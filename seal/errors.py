"""Errors that end a `seal` command with a one-line message and an exit code Argo can act on.

The codes are those of docs/architecture.md: 2 usage/config error and 65 bad data are permanent (fix the
input, do not retry); 75 is transient (store unreachable, throttled, preempted: retry).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_DATA = 65
EXIT_TRANSIENT = 75


class SealError(Exception):
    """A failure the user can act on: `str(err)` is one line naming the input at fault and the fix."""

    exit_code = EXIT_USAGE


class ConfigError(SealError):
    """Bad configuration, command-line usage or a missing input path (permanent)."""

    exit_code = EXIT_USAGE


class DataError(SealError):
    """Input data that exists but cannot be used: malformed JSON, missing fields (permanent)."""

    exit_code = EXIT_DATA


class TransientError(SealError):
    """A failure worth retrying: store unreachable, throttled, server errors, a preempted pod."""

    exit_code = EXIT_TRANSIENT


class NotFoundError(ConfigError):
    """A missing store key (exit 2 like any ConfigError); callers may catch it to treat absence as data."""
