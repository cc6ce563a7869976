"""The xt hooks of xt-baichuan (entry point ``baichuan``). Imports no torch."""

from __future__ import annotations
