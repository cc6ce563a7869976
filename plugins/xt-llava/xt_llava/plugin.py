"""The xt hooks of xt-llava (entry point ``llava``). Imports no torch."""

from __future__ import annotations
