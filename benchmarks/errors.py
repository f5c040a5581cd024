"""The benchmarks' one bad-input error, shared by every harness (latency, serving, ...)."""

from __future__ import annotations

from runtime.errors import VaeError


class BenchError(VaeError, ValueError):
    """A benchmark option or input cannot be used (bad value, unreadable --compare report, unusable --out folder);
    the message names the option. A harness's main reports it as one line and exits 2."""
