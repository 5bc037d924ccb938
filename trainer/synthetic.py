"""A small synthetic dataset for tests and the demo: English sentences spoken by espeak-ng.

``make_dataset(out, count)`` writes ``out/wavs/utt_NN.wav`` (espeak-ng's 22.05 kHz mono PCM) and
``out/data.list`` in upstream's format (``/abs/path.wav|synthetic|en|text``); with ``heldout=N`` also
``out/heldout/held_NN.wav`` + ``out/heldout.list``: the same voice speaking sentences that are never
in the training list (the ceiling of the speaker-similarity measurements) and ``out/heldout.txt``
(their text, one per line, for ``gsv-bench quality --sentences``).  espeak-ng is a
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
    # longer sentences: more speech per utterance for the same number of files
    "When the storm finally passed, the fishermen pulled their boats back into the water and went out again.",
    "The old man told us stories about the war, the long winters and the summer he spent working on a farm.",
    "If you follow the path through the woods, you will reach a small lake where the ducks gather at noon.",
    "My grandmother always kept a jar of honey on the shelf above the stove, next to the tea and the sugar.",
    "The concert started late because the piano had to be tuned again after the long journey from the city.",
    "She opened the window, listened to the birds for a while and then went back to reading her letters.",
    "Nobody expected the little team from the northern valley to win the championship that year.",
    "We missed the last bus, so we walked home along the river and talked about everything under the stars.",
    "The teacher asked every student to bring one object from home and to tell the class why it mattered.",
    "After dinner the whole family sat by the fire, and father read aloud from a thick book of adventures.",
    "The market square fills with traders every Saturday, selling fruit, cheese, flowers and warm bread.",
    "He forgot his umbrella on the train, and by the time he reached the office he was soaked to the skin.",
    "Light travels faster than sound, which is why you see the lightning before you hear the thunder.",
    "Their house stands at the end of a narrow lane, behind a tall hedge and a gate that always squeaks.",
    "The doctor said that a short walk every day would do more good than any medicine she could prescribe.",
    "At the top of the hill there is an old windmill that has not turned its sails for fifty years.",
    "Please remember to switch off the lights, lock the back door and feed the cat before you leave.",
    "The scientists spent three months on the ice, measuring the wind, the snow and the temperature.",
    "On clear nights you can see thousands of stars from the roof of the observatory.",
    "The recipe calls for two eggs, a cup of flour, a pinch of salt and a little butter.",
    "Our train was delayed by an hour, but the view of the mountains made the wait worthwhile.",
    "The children built a castle of sand and watched the waves slowly wash it away.",
    "Every spring the swallows return to the same barn and build their nests under the roof.",
    "She practised the song every evening until she could sing it without looking at the words.",
    "The bridge was closed for repairs, so the cars had to take the long road around the bay.",
    "In the corner of the room stood a grandfather clock that chimed every quarter of an hour.",
    "He wrote the address on the envelope, added a stamp and dropped it into the red post box.",
    "The wind carried the smell of salt and seaweed far inland on warm summer evenings.",
    "A good map, a warm coat and a bottle of water are all you need for the walk.",
    "The baby laughed every time the puppy chased its own tail across the kitchen floor.",
    "They painted the fence white, planted tulips by the gate and hung a swing from the oak tree.",
    "The lecture was about the history of clocks, from sundials to the atomic clocks of today.",
    "When the lights went out, we found candles in the drawer and played cards until midnight.",
    "The museum guard smiled and told us that the painting had been stolen twice in a hundred years.",
    "Fresh snow squeaked under our boots as we climbed towards the hut in the morning light.",
    "She keeps a small notebook in her pocket and writes down every idea before it slips away.",
)

# Sentences never in the training list: the demo's and the benchmark's held-out text.
HELDOUT_SENTENCES = (
    "Welcome to the village, traveler. The gates open at dawn.",
    "I will meet you at the harbour when the sun goes down.",
    "The old clock on the kitchen wall stopped exactly at midnight.",
    "Bring two apples and a loaf of bread back from the market.",
    "Our guide pointed at the castle on the hill and told us its story.",
    "The river was so calm that the trees looked like they were standing on glass.",
)


# Voices for multi-speaker pre-training (gsv-train synthetic --voices pretrain): accents and voice variants of
# espeak-ng, none of them the demo's own speaker ("en-us" without a variant), so that fine-tuning a base
# pre-trained on them still has to move it towards that speaker
PRETRAIN_VOICES = ("en-gb+m3", "en-gb-scotland+f2", "en-gb-x-rp+m5", "en-029+f4", "en-gb-x-gbclan+m1",
                   "en-gb-x-gbcwmd+f1", "en-us+m4", "en-us+f3")


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


def make_dataset(out: str | Path, count: int = 16, voice: str = "en-us", speaker: str = "synthetic",
                 heldout: int = 0) -> Path:
    """Speak ``count`` sentences (and ``heldout`` held-out ones) into ``out``; returns the path of
    the training ``.list`` file."""
    exe = find_espeak()
    _check_count(count)
    if not 0 <= heldout <= len(HELDOUT_SENTENCES):
        raise SyntheticDataError(f"heldout must be between 0 and {len(HELDOUT_SENTENCES)}")
    out = Path(out).resolve()
    list_path = _write_list(out / "data.list", _speak_all(out / "wavs", "utt", SENTENCES[:count], exe, voice, speaker))
    if heldout:
        _write_list(out / "heldout.list",
                    _speak_all(out / "heldout", "held", HELDOUT_SENTENCES[:heldout], exe, voice, speaker))
        (out / "heldout.txt").write_text("\n".join(HELDOUT_SENTENCES[:heldout]) + "\n", "utf-8")
    log.info("wrote %d utterances (%d held out) to %s", count, heldout, out)
    return list_path


def make_multi_voice_dataset(out: str | Path, voices=PRETRAIN_VOICES, count: int = len(SENTENCES)) -> Path:
    """Speak the first ``count`` training sentences in each of ``voices`` (one speaker per voice, named
    after it) into ``out/wavs/<voice>/``; returns the path of the joined ``out/data.list``."""
    exe = find_espeak()
    if not voices:
        raise SyntheticDataError("give at least one voice")
    _check_count(count)
    out = Path(out).resolve()
    lines = []
    for voice in voices:
        folder = voice.replace("+", "_")  # also the files' prefix: prepare keys items by file name
        lines += _speak_all(out / "wavs" / folder, folder, SENTENCES[:count], exe, voice, voice)
    log.info("wrote %d utterances of %d voices to %s", len(lines), len(voices), out)
    return _write_list(out / "data.list", lines)


def _check_count(count: int) -> None:
    if not 1 <= count <= len(SENTENCES):
        raise SyntheticDataError(f"count must be between 1 and {len(SENTENCES)}")


def _write_list(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


def _speak_all(wavs: Path, prefix: str, sentences, exe: str, voice: str, speaker: str) -> list[str]:
    """Speak each sentence into ``wavs/<prefix>_NN.wav`` (files already there are kept) -> the .list lines."""
    wavs.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, text in enumerate(sentences):
        path = wavs / f"{prefix}_{i:02d}.wav"
        if not path.is_file():
            # a little variation in rate and pitch, as a real speaker has from take to take
            speak(text, path, exe, voice, speed=140 + 5 * (i % 4), pitch=45 + 3 * (i % 5))
        lines.append(f"{path}|{speaker}|en|{text}")
    return lines
