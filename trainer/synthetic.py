"""A small synthetic dataset for tests and the demo: English sentences spoken by espeak-ng.

``make_dataset(out, count)`` writes ``out/wavs/utt_NN.wav`` (espeak-ng's 22.05 kHz mono PCM) and
``out/data.list`` in upstream's format (``/abs/path.wav|synthetic|en|text``).  espeak-ng is a
system program (``make sysdeps`` or ``apt-get install espeak-ng`` installs it); without it this
fails with a clear error rather than producing silence.
"""
from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

from gsv.errors import GsvError

log = logging.getLogger(__name__)

SENTENCES = (
    "The sun was warm on the old stone wall.",
    "She packed a small bag and left before dawn.",
    "Please bring the blue folder to the meeting.",
    "A quiet river runs behind the village school.",
    "He counted seven boats in the harbour.",
    "The kettle is singing in the kitchen.",
    "We walked along the beach until the tide came in.",
    "Every morning the baker opens his shop at six.",
    "The train to the city leaves in ten minutes.",
    "Her garden is full of roses and tall sunflowers.",
    "Turn left at the bridge and follow the road.",
    "The children laughed at the clever little dog.",
    "Rain is expected later in the afternoon.",
    "This lamp needs a new bulb.",
    "They built a wooden house near the forest.",
    "Can you hear the bells from the church tower?",
    "The library closes early on Sundays.",
    "My brother plays the violin every evening.",
    "The painter mixed yellow and green on his palette.",
    "A cold wind blew across the empty field.",
    "Our neighbours invited us for dinner on Friday.",
    "The museum has a room full of ancient maps.",
    "Write your name at the top of the page.",
    "Snow covered the mountains during the night.",
)


class SyntheticDataError(GsvError):
    """espeak-ng is missing or failed."""


def find_espeak() -> str:
    for exe in ("espeak-ng", "espeak"):
        path = shutil.which(exe)
        if path:
            return path
    raise SyntheticDataError(
        "espeak-ng is not installed: the synthetic dataset is spoken by it. Install it with "
        "'make sysdeps' or 'apt-get install espeak-ng' (as root), then try again"
    )


def speak(text: str, path: Path, exe: str, voice: str = "en-us", speed: int = 150, pitch: int = 50) -> None:
    try:
        subprocess.run([exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), text],
                       check=True, capture_output=True, timeout=60)
    except subprocess.CalledProcessError as e:
        raise SyntheticDataError(f"espeak-ng failed on {text!r}: {e.stderr.decode(errors='replace').strip()}") from None
    except subprocess.TimeoutExpired:
        raise SyntheticDataError(f"espeak-ng timed out on {text!r}") from None
    if not path.is_file() or path.stat().st_size <= 44:
        raise SyntheticDataError(f"espeak-ng wrote no audio for {text!r}")


def make_dataset(out: str | Path, count: int = 16, voice: str = "en-us", speaker: str = "synthetic") -> Path:
    """Speak ``count`` sentences into ``out``; returns the path of the ``.list`` file."""
    exe = find_espeak()
    if not 1 <= count <= len(SENTENCES):
        raise SyntheticDataError(f"count must be between 1 and {len(SENTENCES)}")
    out = Path(out).resolve()
    wavs = out / "wavs"
    wavs.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, text in enumerate(SENTENCES[:count]):
        path = wavs / f"utt_{i:02d}.wav"
        if not path.is_file():
            # a little variation in rate and pitch, as a real speaker has from take to take
            speak(text, path, exe, voice, speed=140 + 5 * (i % 4), pitch=45 + 3 * (i % 5))
        lines.append(f"{path}|{speaker}|en|{text}")
    list_path = out / "data.list"
    list_path.write_text("\n".join(lines) + "\n", "utf-8")
    log.info("wrote %d utterances to %s", count, out)
    return list_path
