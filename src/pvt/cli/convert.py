"""`pvt` sub-commands: (to be filled in)."""

from __future__ import annotations


def register(sub) -> None:
    """Add this module's sub-commands to the pvt parser."""
