"""Typed errors of the core package.

Every error a user can cause (a bad file, bad text, bad audio, a bad option) is a subclass of
:class:`GsvError`.  Command-line entry points print ``str(err)`` as one line and exit with code 2;
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import sys
from typing import Callable


class GsvError(Exception):
    """Base class of every user-facing error (CLI exit code 2)."""

    exit_code = 2


def run_command(prog: str, command: Callable[[], object]) -> int:
    """A command-line entry point's exit code: ``command()``'s result (None = 0); a GsvError is
    one ``PROG: error: ...`` line and its exit code, Ctrl-C one line and 130.  Anything else is a
    bug and keeps its traceback."""
    try:
        return int(command() or 0)
    except GsvError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


class CheckpointError(GsvError):
    """A checkpoint file is missing, truncated, corrupt, of the wrong kind or has wrong tensors."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint's pickle references code outside the allow-list (never executed)."""


class UnsupportedVersionError(CheckpointError):
    """A checkpoint of a GPT-SoVITS version this build does not run (v3, v4, v2Pro, ...)."""

    def __init__(self, version: str, detail: str = ""):
        self.version = version
        msg = f"GPT-SoVITS {version} checkpoints are not supported (this build runs v1 and v2)"
        super().__init__(msg + (f": {detail}" if detail else ""))


class BundleError(GsvError):
    """A bundle directory is missing, incomplete, of an unknown format version or inconsistent."""


class TextError(GsvError):
    """Text that cannot be synthesized (empty after normalisation, too long, ...)."""


class UnknownLanguageError(TextError):
    """A language code the frontend does not know."""


class AudioError(GsvError):
    """Reference audio that cannot be used (unreadable, too short/long, silent, NaN, ...)."""


class VoiceError(GsvError):
    """A voice that is missing, corrupt, or was prepared for another bundle."""


class OptionError(GsvError):
    """A per-request option out of its valid range."""


class VoiceNotFound(VoiceError):
    """No voice with that id (in the caller's namespace)."""


class VoiceExists(VoiceError):
    """A voice with that id exists already (or another registration of it won)."""


class VoiceIncompatible(VoiceError):
    """A voice used with (or blended for) a model of another family (phone table): the caller must
    register the voice for that model (INVALID_ARGUMENT)."""


class VoiceUnavailable(VoiceError):
    """A stored voice that cannot be used as it is (corrupt, encrypted with a key this process does
    not have, or prepared for another model without its reference audio): the caller's request is
    fine, the voice must be registered again (or the key given)."""


class StoreUnreachable(GsvError):
    """The voice store (a database) cannot be reached now; the same call may succeed later."""
