"""The xt hooks of xt-lmdeploy (entry point ``lmdeploy``). Imports no torch."""

from __future__ import annotations
