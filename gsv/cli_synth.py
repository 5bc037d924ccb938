"""``gsv synth`` and ``gsv voice add|list|rm`` (registered into the main ``gsv`` command)."""
from __future__ import annotations


def register(sub) -> None:
    """Placeholder until the synthesis pipeline lands: registers nothing."""
    return None
