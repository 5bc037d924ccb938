"""Importing ``nltk`` without the scientific stack it pulls in for features the frontends never use.

``import nltk`` runs its package ``__init__``, which imports every subpackage; where scikit-learn and
SciPy are installed (librosa, a dependency of the speaker-quality tools, brings both) that means
about 1,000 more modules and 87 MB more resident memory in a server, for nltk's classifiers and
statistics.  The frontends use only nltk's regular-expression tokenizer (English) and g2pk2's
imports (Korean).  nltk imports those optional packages inside ``try: ... except ImportError``, so
while nltk is first imported they are marked absent (``sys.modules[name] = None``, Python's own way
to make an import fail); afterwards the marks are removed, so a later ``import scipy`` works as usual.
Nothing is blocked when nltk or the packages are already imported (nothing would be saved then).
"""
from __future__ import annotations

import contextlib
import sys
import threading

# optional imports of nltk that the frontends do not need (what nltk does without them: its
# scikit-learn classifier wrapper and a few SciPy-based statistics are unavailable)
NLTK_SKIPPED_OPTIONAL = ("sklearn", "scipy")
_lock = threading.Lock()


@contextlib.contextmanager
def _absent(names: tuple[str, ...]):
    marked = [n for n in names if n not in sys.modules]
    for n in marked:
        sys.modules[n] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for n in marked:
            if sys.modules.get(n, ...) is None:
                del sys.modules[n]


def import_nltk():
    """The ``nltk`` package, imported (once per process) without :data:`NLTK_SKIPPED_OPTIONAL`."""
    if "nltk" in sys.modules:
        return sys.modules["nltk"]
    with _lock:
        if "nltk" in sys.modules:
            return sys.modules["nltk"]
        try:
            with _absent(NLTK_SKIPPED_OPTIONAL):
                import nltk
        except ImportError:  # an nltk that needs them after all: forget the partial import, import it whole
            for name in [m for m in sys.modules if m == "nltk" or m.startswith("nltk.")]:
                del sys.modules[name]
            import nltk
        return nltk
