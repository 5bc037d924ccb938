"""Japanese frontend: pyopenjtalk phones with pitch-accent marks, as upstream GPT-SoVITS v2.

Rules reproduced (upstream ``GPT_SoVITS/text/japanese.py``):

* ``normalize``: only collapses runs of the ASCII pause marks ``! ? … , . -`` to their first
  character (full-width ``！`` etc. are left alone).
* ``g2p``: ``％`` becomes ``パーセント`` and the text is lower-cased; the text is then cut at every
  character that is not "Japanese" (ASCII letters, Unicode decimal digits, ``々``, kana, CJK
  ideographs, full-width letters and half-width katakana).  Each Japanese run goes through the
  OpenJTalk frontend and the prosody extractor below; each cut character is kept as a phone
  (an ASCII space is dropped), after mapping the CJK punctuation ``：；，。！？·、`` and newline
  to ``, . ! ?``.
* Prosody extraction (after espnet's ``pyopenjtalk_g2p_prosody``): phones from the full-context
  labels, unvoiced vowels lower-cased, ``pau`` -> ``_``, and after a phone ``#`` (accent-phrase
  boundary), ``]`` (pitch fall) or ``[`` (pitch rise); the leading/trailing silence marks are
  removed.  ``#`` and unknown marks are not v2 symbols: :func:`gsv.text.cleaner.clean_text`
  turns them into ``UNK``.

Upstream additionally installs its own user dictionary (``ja_userdic/userdict.csv``).  This
build has none by default; :class:`JapaneseG2P` accepts the path of a dictionary CSV (OpenJTalk
/ naist-jdic format) which is compiled once with ``pyopenjtalk.mecab_dict_index`` into a cache
directory, keyed by the CSV's SHA-256.  Use :func:`configure` to make such an instance the
module default used by ``clean_text``.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import sys
import tempfile
import threading
from pathlib import Path

logger = logging.getLogger(__name__)

# Characters that pyopenjtalk gets to see; everything else is a "mark" kept as its own phone.
# ``\d`` is deliberately Unicode-aware (it matches full-width ０-９ too), as upstream's pattern.
_JA_CHAR = r"A-Za-z\d\u3005\u3040-\u30ff\u4e00-\u9fff\uff11-\uff19\uff21-\uff3a\uff41-\uff5a\uff66-\uff9d"
_JA_RUN_START = re.compile(f"[{_JA_CHAR}]")
_NON_JA = re.compile(f"[^{_JA_CHAR}]")

# Runs of these collapse to their first character (upstream's v1 punctuation list + "-").
_PAUSE_MARKS = "!?…,.-"
_PAUSE_RUN = re.compile("([{0}])[{0}]+".format(re.escape(_PAUSE_MARKS)))

_MARK_TO_PHONE = {
    "：": ",", "；": ",", "，": ",", "。": ".", "！": "!", "？": "?",
    "\n": ".", "·": ",", "、": ",",
}

# Full-context label fields used by the prosody extractor.  Each is searched over the whole
# label (first match wins), and a missing/"xx" field reads as -50, like the espnet original.
_RE_P3 = re.compile(r"-(.*?)\+")
_RE_A1 = re.compile(r"/A:([0-9\-]+)\+")
_RE_A2 = re.compile(r"\+(\d+)\+")
_RE_A3 = re.compile(r"\+(\d+)/")
_RE_F1 = re.compile(r"/F:(\d+)_")
_RE_E3 = re.compile(r"!(\d+)_")
_MISSING = -50


def _feature(regex: re.Pattern, label: str) -> int:
    m = regex.search(label)
    return _MISSING if m is None else int(m.group(1))


@contextlib.contextmanager
def _stdout_to_stderr():
    """Send the dictionary compiler's progress output (written by C code to fd 1) to stderr.

    Commands such as ``gsv phonemize`` write JSON on stdout, which must stay clean.
    """
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):  # no usable fd 1 (embedded interpreter): nothing to protect
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def collapse_pause_runs(text: str) -> str:
    """Collapse runs of ``! ? … , . -`` to their first character."""
    return _PAUSE_RUN.sub(r"\1", text)


class JapaneseG2P:
    """A pyopenjtalk-backed Japanese frontend, optionally with a compiled user dictionary.

    ``user_dict``: path of a user-dictionary CSV (OpenJTalk format) or of an already compiled
    ``.dic``; ``None`` means the bundled system dictionary only.  ``cache_dir``: where a CSV
    is compiled to (default ``~/.cache/gsv/ja_userdic``).  The OpenJTalk instance is private
    to this object, so two instances with different dictionaries do not interfere.
    """

    def __init__(self, user_dict: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None):
        self.user_dict = Path(user_dict) if user_dict is not None else None
        self.cache_dir = Path(cache_dir) if cache_dir is not None else Path.home() / ".cache" / "gsv" / "ja_userdic"
        self._jtalk = None
        self._lock = threading.Lock()

    # -- engine -------------------------------------------------------------------------------
    def _engine(self):
        if self._jtalk is None:
            with self._lock:
                if self._jtalk is None:
                    import pyopenjtalk

                    kwargs = {"dn_mecab": pyopenjtalk.OPEN_JTALK_DICT_DIR}
                    if self.user_dict is not None:
                        dic = self.compiled_user_dict()
                        kwargs["userdic"] = str(dic).encode("utf-8")
                        kwargs["userdic_reading_protection"] = [False]
                    self._jtalk = pyopenjtalk.OpenJTalk(**kwargs)
        return self._jtalk

    def compiled_user_dict(self) -> Path:
        """Path of the compiled user dictionary, compiling the CSV into the cache if needed."""
        from gsv.errors import GsvError

        src = self.user_dict
        if src is None:
            raise GsvError("no Japanese user dictionary configured")
        if not src.is_file():
            raise GsvError(f"Japanese user dictionary not found: {src}")
        if src.suffix.lower() == ".dic":
            return src
        digest = hashlib.sha256(src.read_bytes()).hexdigest()[:20]
        out = self.cache_dir / f"userdict-{digest}.dic"
        if out.is_file():
            return out
        import pyopenjtalk

        self.cache_dir.mkdir(parents=True, exist_ok=True)
        # Compile to a temporary name and rename, so a concurrent or interrupted build never
        # leaves a truncated dictionary under the final name.
        fd, tmp = tempfile.mkstemp(prefix="userdict-", suffix=".tmp", dir=self.cache_dir)
        os.close(fd)
        try:
            logger.info("compiling Japanese user dictionary %s -> %s", src, out)
            with _stdout_to_stderr():
                pyopenjtalk.mecab_dict_index(str(src), tmp)
            if os.path.getsize(tmp) == 0:
                raise GsvError(f"compiling the Japanese user dictionary {src} failed")
            os.replace(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return out

    # -- public API -----------------------------------------------------------------------------
    def normalize(self, text: str) -> str:
        return collapse_pause_runs(text)

    def g2p(self, norm_text: str) -> tuple[list[str], None]:
        text = norm_text.replace("％", "パーセント").lower()
        runs = _NON_JA.split(text)
        marks = _NON_JA.findall(text)
        phones: list[str] = []
        for i, run in enumerate(runs):
            if _JA_RUN_START.match(run):
                phones.extend(self.prosody_phones(run)[1:-1])
            if i < len(marks):
                mark = marks[i]
                if mark == " ":  # a plain space is a word gap, not a phone
                    continue
                phones.append(mark)
        return [_MARK_TO_PHONE.get(p, p) for p in phones], None

    def prosody_phones(self, text: str) -> list[str]:
        """Phones and prosody marks of one run of Japanese text, with the ``^``/``$`` ends."""
        import pyopenjtalk

        jtalk = self._engine()
        labels = pyopenjtalk.make_label(pyopenjtalk.run_frontend(text, jtalk=jtalk), jtalk=jtalk)
        return _prosody_from_labels(labels)


def _prosody_from_labels(labels: list[str]) -> list[str]:
    out: list[str] = []
    last = len(labels) - 1
    for n, label in enumerate(labels):
        p3 = _RE_P3.search(label).group(1)
        if p3 in "AEIOU":  # unvoiced vowels are spoken as plain vowels
            p3 = p3.lower()
        if p3 == "sil":
            if n == 0:
                out.append("^")
            elif n == last:
                e3 = _feature(_RE_E3, label)
                if e3 == 0:
                    out.append("$")
                elif e3 == 1:
                    out.append("?")
            continue
        if p3 == "pau":
            out.append("_")
            continue
        out.append(p3)

        a1 = _feature(_RE_A1, label)
        a2 = _feature(_RE_A2, label)
        a3 = _feature(_RE_A3, label)
        f1 = _feature(_RE_F1, label)
        # The last label is always a silence; the guard only keeps malformed input from crashing.
        a2_next = _feature(_RE_A2, labels[n + 1]) if n < last else _MISSING
        # Substring test on purpose: it is what decides which phones may close a phrase.
        if a3 == 1 and a2_next == 1 and p3 in "aeiouAEIOUNcl":
            out.append("#")
        elif a1 == 0 and a2_next == a2 + 1 and a2 != f1:
            out.append("]")
        elif a2 == 1 and a2_next == 2:
            out.append("[")
    return out


_default: JapaneseG2P | None = None
_default_lock = threading.Lock()


def configure(user_dict: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None) -> JapaneseG2P:
    """Replace the module-default frontend (used by ``normalize``/``g2p``/``clean_text``)."""
    global _default
    engine = JapaneseG2P(user_dict=user_dict, cache_dir=cache_dir)
    with _default_lock:
        _default = engine
    return engine


def default_frontend() -> JapaneseG2P:
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = JapaneseG2P()
    return _default


def normalize(text: str) -> str:
    return default_frontend().normalize(text)


def g2p(norm_text: str) -> tuple[list[str], None]:
    return default_frontend().g2p(norm_text)
