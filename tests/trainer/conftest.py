"""Trainer-test settings: keep moto's per-request access log out of failure reports."""

from __future__ import annotations

import logging

logging.getLogger("werkzeug").setLevel(logging.WARNING)
