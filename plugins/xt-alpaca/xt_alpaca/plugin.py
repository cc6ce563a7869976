"""The xt hooks of xt-alpaca (entry point ``alpaca``). Imports no torch."""

from __future__ import annotations
