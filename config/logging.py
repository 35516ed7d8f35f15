"""Logging set-up shared by every warmpool process."""
from __future__ import annotations

import logging
import re

_SECRET = re.compile(r"(?i)(bearer\s+|token[=:]\s*|password[=:]\s*)([^\s&\"']+)")


class RedactSecrets(logging.Filter):
    """Masks bearer tokens and passwords that would otherwise reach a log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = _SECRET.sub(lambda m: m.group(1) + "***", record.msg)
        return True


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
