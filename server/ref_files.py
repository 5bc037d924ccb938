"""Reference audio files named by path (upstream ``/tts``'s ``ref_audio_path``), confined to one
folder (``--ref-audio-dir``) and prepared once, like a registered voice.

A path is resolved inside the folder (relative to it; an absolute path only if it lies inside it);
anything that resolves outside — ``..``, an absolute path elsewhere, a symbolic link leading out —
is refused as INVALID_ARGUMENT, before any file is opened.  A prepared voice is cached under the
file's resolved path, size and modification time and the prompt (text, language, auxiliary files),
so an edited file is prepared again; the cache keeps the most recently used :data:`CACHE_SIZE`.

Methods may read files and run the voice preparer: callers on an event loop run them in the voice
pool.  The cache has one lock.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from pathlib import Path

from gsv.voice import Voice, VoicePreparer
from server.errors import Code, RequestError, VoiceNotFound, shown

log = logging.getLogger(__name__)

CACHE_SIZE = 32
MAX_PATH_CHARS = 1024


class ReferenceFiles:
    def __init__(self, root: Path | None, preparer: VoicePreparer, max_bytes: int):
        self.root = Path(root).resolve() if root is not None else None
        self.preparer, self.max_bytes = preparer, max_bytes
        self._lock = threading.Lock()  # guards _cache
        self._cache: OrderedDict[tuple, Voice] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def resolve(self, name: str, field: str = "ref_audio_path") -> Path:
        """The regular file ``name`` names inside the folder (INVALID_ARGUMENT outside it,
        NOT_FOUND if there is no such file)."""
        if self.root is None:
            raise RequestError(Code.INVALID_ARGUMENT, f"{field} {shown(name)} is not a registered voice, and this "
                                                      "server reads no reference files (start it with --ref-audio-dir)")
        if not name or len(name) > MAX_PATH_CHARS or "\x00" in name:
            raise RequestError(Code.INVALID_ARGUMENT, f"{field} is empty, too long or contains NUL")
        path = (self.root / name).resolve()  # follows symbolic links, so a link out is seen as outside
        if not path.is_relative_to(self.root):
            raise RequestError(Code.INVALID_ARGUMENT, f"{field} {shown(name)} is outside the reference audio folder")
        if not path.exists():
            raise VoiceNotFound(f"no voice or reference file {shown(name)}")
        if not path.is_file():
            raise RequestError(Code.INVALID_ARGUMENT, f"{field} {shown(name)} is not a file")
        return path

    def voice(self, ref: str, prompt_text: str, prompt_lang: str, aux: list[str],
              preparer: VoicePreparer | None = None) -> Voice:
        """The prepared voice of a reference file (+ auxiliary files) for ``preparer``'s model (default:
        the default model's), from the cache if unchanged."""
        preparer = preparer or self.preparer
        paths = [self.resolve(ref)] + [self.resolve(a, "aux_ref_audio_paths") for a in aux]
        stats = [p.stat() for p in paths]
        total = sum(st.st_size for st in stats)
        if total > self.max_bytes:
            raise RequestError(Code.INVALID_ARGUMENT, f"reference audio is {total} bytes; the limit is {self.max_bytes}")
        key = (tuple((str(p), st.st_size, st.st_mtime_ns) for p, st in zip(paths, stats)), prompt_text, prompt_lang,
               preparer.bundle.bundle_id)
        with self._lock:
            voice = self._cache.get(key)
            if voice is not None:
                self._cache.move_to_end(key)
                return voice
        voice_id = "ref-" + hashlib.sha256(repr(key).encode()).hexdigest()[:16]
        data = [p.read_bytes() for p in paths]
        voice = preparer.prepare(voice_id, data[0], prompt_text, prompt_lang, data[1:])
        log.info("prepared reference file %s as voice %s", paths[0].relative_to(self.root), voice_id)
        with self._lock:
            self._cache[key] = voice
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return voice
