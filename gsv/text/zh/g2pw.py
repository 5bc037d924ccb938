"""Optional G2PW polyphone disambiguation for the zh frontend (upstream's default pinyin source).

Upstream GPT-SoVITS predicts the reading of polyphonic characters with G2PW, an ONNX classifier
over BERT features, instead of taking pypinyin's dictionary choice. This module reproduces that
path for users who have the model locally; nothing is downloaded. Usage::

    g2pw = G2PW("/models/G2PWModel", tokenizer_dir="/models/chinese-roberta-wwm-ext-large")
    phones, word2ph = g2pw.g2p(gsv.text.zh.normalize(text))

``model_dir`` is upstream's ``G2PWModel`` folder: ``g2pW.onnx``, ``POLYPHONIC_CHARS.txt``,
``MONOPHONIC_CHARS.txt``, ``bopomofo_to_pinyin_wo_tune_dict.json``, ``char_bopomofo_dict.json``
and optionally ``config.py`` (read as data, never executed). If the folder also holds upstream's
word-level fixes ``polyphonic.rep`` / ``polyphonic-fix.rep`` they are applied per jieba word
(upstream ``correct_pronunciation``). The tokenizer directory is a local BERT tokenizer
(chinese-roberta); without it the config's ``model_source`` is used if it names a local folder.

Like upstream, sentences are converted to Taiwan traditional characters with OpenCC ``s2tw``
before prediction (the model was trained on traditional text); this needs the ``opencc`` package.
Pass ``opencc_config=None`` to skip the conversion. Everything is loaded on first use.
"""
from __future__ import annotations

import ast
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from gsv.errors import TextError
from gsv.text.zh.g2p import phonemize
from gsv.text.zh.normalize import to_simplified

logger = logging.getLogger(__name__)

MODEL_FILE = "g2pW.onnx"
POLYPHONIC_CHARS_FILE = "POLYPHONIC_CHARS.txt"
MONOPHONIC_CHARS_FILE = "MONOPHONIC_CHARS.txt"
BOPOMOFO_TO_PINYIN_FILE = "bopomofo_to_pinyin_wo_tune_dict.json"
CHAR_BOPOMOFO_FILE = "char_bopomofo_dict.json"
CONFIG_FILE = "config.py"
POLYPHONIC_WORD_FILES = ("polyphonic.rep", "polyphonic-fix.rep")  # later files override earlier ones
MAX_TOKENS = 512
MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask", "phoneme_mask", "char_ids", "position_ids")
_ASCII_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")

# Characters upstream never sends to the model (their readings come from pypinyin and the sandhi
# rules instead), and characters whose single listed reading it does not trust.
NOT_PREDICTED = frozenset("一不和咋嗲剖差攢倒難奔勁拗肖瘙誒泊听噢")
NOT_MONOPHONIC = frozenset("似攢")
# Defaults of upstream's G2PW config for the keys this module reads.
DEFAULT_CONFIG = {"model_source": "bert-base-chinese", "use_mask": True, "use_char_phoneme": False}


def read_config(path: Path) -> dict:
    """Top-level literal assignments of a G2PW ``config.py`` (parsed, not executed), over defaults."""
    config = dict(DEFAULT_CONFIG)
    if not path.is_file():
        return config
    for node in ast.parse(path.read_text("utf-8"), filename=str(path)).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                config[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                logger.debug("ignoring non-literal %s in %s", node.targets[0].id, path)
    return config


def read_char_readings(path: Path) -> list[tuple[str, str]]:
    """``char<TAB>bopomofo`` lines -> [(char, bopomofo), ...] in file order."""
    rows = []
    for n, line in enumerate(path.read_text("utf-8").strip().split("\n"), 1):
        fields = line.split("\t")
        if len(fields) != 2:
            raise TextError(f"{path}:{n}: expected 'char<TAB>reading'")
        rows.append((fields[0], fields[1]))
    return rows


def read_polyphonic_words(path: Path) -> dict[str, list[str]]:
    """``word: ['py1', 'py2']`` lines (upstream's .rep format) -> {word: [pinyin, ...]}."""
    table = {}
    for n, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        word, sep, value = line.partition(":")
        try:
            readings = ast.literal_eval(value.strip()) if sep else None
        except (ValueError, SyntaxError):
            readings = None
        if not isinstance(readings, list) or not all(isinstance(r, str) for r in readings):
            raise TextError(f"{path}:{n}: expected \"word: ['pinyin', ...]\"")
        table[word.strip()] = readings
    return table


def _map_text_to_tokens(tokenizer, text: str) -> tuple[list[str], list[int | None], list[tuple[int, int]]]:
    """Tokens of ``text`` with a char->token map and each token's (start, end) in ``text``.

    As upstream: a run of ASCII letters/digits is tokenized as one word, every other character on
    its own, spaces are skipped (their map entry stays None). A character that no token span
    covers keeps its word's index.
    """
    words: list[tuple[int, int]] = []
    char_to_token: list[int | None] = [None] * len(text)
    i = 0
    while i < len(text):
        if text[i] == " ":
            i += 1
            continue
        j = i + 1
        if text[i] in _ASCII_ALNUM:
            while j < len(text) and text[j] in _ASCII_ALNUM:
                j += 1
        for k in range(i, j):
            char_to_token[k] = len(words)
        words.append((i, j))
        i = j
    tokens: list[str] = []
    token_spans: list[tuple[int, int]] = []
    for start, end in words:
        pieces = tokenizer.tokenize(text[start:end])
        if not pieces or pieces == ["[UNK]"]:
            tokens.append("[UNK]")
            token_spans.append((start, end))
            continue
        pos = start
        for piece in pieces:
            length = len(piece[2:] if piece.startswith("##") else piece)
            tokens.append(piece)
            token_spans.append((pos, pos + length))
            pos += length
    for t, (start, end) in enumerate(token_spans):
        for k in range(start, min(end, len(text))):
            char_to_token[k] = t
    return tokens, char_to_token, token_spans


def _window(tokens, char_to_token, token_spans, text: str, query: int):
    """Cut a long input to MAX_TOKENS - 2 tokens centred on the query character (upstream rule)."""
    keep = MAX_TOKENS - 2
    if len(tokens) <= keep:
        return text, query, tokens, char_to_token
    first = char_to_token[query] - keep // 2
    first = max(0, min(first, len(tokens) - keep))
    last = first + keep
    start, end = token_spans[first][0], token_spans[last - 1][1]
    shifted = [None if t is None else t - first for t in char_to_token[start:end]]
    return text[start:end], query - start, tokens[first:last], shifted


@dataclass
class _Model:
    session: object
    tokenizer: object
    labels: list[str]
    label_ids_of_char: dict[str, list[int]]
    chars: list[str]
    predicted_chars: frozenset[str]
    monophonic: dict[str, str]
    bopomofo_to_pinyin: dict[str, str]
    use_mask: bool
    use_char_phoneme: bool
    to_traditional: object  # callable or None
    polyphonic_words: dict[str, list[str]]


class G2PW:
    """Pinyin source backed by a local G2PW model; pass to :func:`gsv.text.zh.g2p.phonemize`."""

    def __init__(
        self,
        model_dir: str | Path,
        tokenizer_dir: str | Path | None = None,
        *,
        opencc_config: str | None = "s2tw",
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
        intra_op_threads: int = 0,
    ):
        self.model_dir = Path(model_dir)
        self.tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir is not None else None
        self.opencc_config = opencc_config
        self.providers = tuple(providers)
        self.intra_op_threads = intra_op_threads
        self._model: _Model | None = None
        self._lock = threading.Lock()

    # --- loading ---------------------------------------------------------------------------------

    def _require(self, name: str) -> Path:
        path = self.model_dir / name
        if not path.is_file():
            raise TextError(f"G2PW model directory {self.model_dir} has no {name}")
        return path

    def _load(self) -> _Model:
        with self._lock:
            if self._model is None:
                self._model = self._build()
                logger.info("loaded G2PW model from %s", self.model_dir)
            return self._model

    def _build(self) -> _Model:
        if not self.model_dir.is_dir():
            raise TextError(f"G2PW model directory {self.model_dir} does not exist")
        config = read_config(self.model_dir / CONFIG_FILE)
        polyphonic = read_char_readings(self._require(POLYPHONIC_CHARS_FILE))
        monophonic = read_char_readings(self._require(MONOPHONIC_CHARS_FILE))
        bopomofo_to_pinyin = json.loads(self._require(BOPOMOFO_TO_PINYIN_FILE).read_text("utf-8"))
        self._require(CHAR_BOPOMOFO_FILE)  # upstream loads it but it never changes a reading
        if config["use_char_phoneme"]:
            labels = sorted({f"{c} {p}" for c, p in polyphonic})
            keys = [f"{c} {p}" for c, p in polyphonic]
        else:
            labels = sorted({p for _, p in polyphonic})
            keys = [p for _, p in polyphonic]
        index = {label: i for i, label in enumerate(labels)}
        label_ids_of_char: dict[str, list[int]] = {}
        for (char, _), key in zip(polyphonic, keys):
            label_ids_of_char.setdefault(char, []).append(index[key])
        polyphonic_words: dict[str, list[str]] = {}
        for name in POLYPHONIC_WORD_FILES:
            if (self.model_dir / name).is_file():
                polyphonic_words.update(read_polyphonic_words(self.model_dir / name))
        return _Model(
            session=self._open_session(self._require(MODEL_FILE)),
            tokenizer=self._open_tokenizer(config["model_source"]),
            labels=labels,
            label_ids_of_char=label_ids_of_char,
            chars=sorted(label_ids_of_char),
            predicted_chars=frozenset(label_ids_of_char) - NOT_PREDICTED,
            monophonic={c: p for c, p in monophonic if c not in NOT_MONOPHONIC},
            bopomofo_to_pinyin=bopomofo_to_pinyin,
            use_mask=bool(config["use_mask"]),
            use_char_phoneme=bool(config["use_char_phoneme"]),
            to_traditional=self._open_opencc(),
            polyphonic_words=polyphonic_words,
        )

    def _open_session(self, path: Path):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = self.intra_op_threads
        options.log_severity_level = 3
        return onnxruntime.InferenceSession(str(path), sess_options=options, providers=list(self.providers))

    def _open_tokenizer(self, model_source: str):
        directory = self.tokenizer_dir
        if directory is None and Path(model_source).is_dir():
            directory = Path(model_source)
        if directory is None or not directory.is_dir():
            raise TextError(
                "G2PW needs a local BERT tokenizer directory (tokenizer_dir=...); "
                f"{model_source!r} from the model config is not a local folder"
            )
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)

    def _open_opencc(self):
        if self.opencc_config is None:
            return None
        try:
            import opencc
        except ImportError:
            raise TextError(
                "G2PW converts text with OpenCC first: install the 'opencc' package, "
                "or pass opencc_config=None"
            ) from None
        return opencc.OpenCC(self.opencc_config).convert

    # --- prediction ------------------------------------------------------------------------------

    def _bopomofo_pinyin(self, model: _Model, bopomofo: str) -> str | None:
        base = model.bopomofo_to_pinyin.get(bopomofo[:-1])
        if not base:
            logger.warning("G2PW reading %r has no pinyin", bopomofo)
            return None
        return base + bopomofo[-1]

    def _model_inputs(self, model: _Model, text: str, queries: list[int]) -> dict:
        import numpy as np

        rows = {k: [] for k in MODEL_INPUTS}
        lowered = text.lower()
        tokens, char_to_token, spans = _map_text_to_tokens(model.tokenizer, lowered)
        for query in queries:
            part, q, part_tokens, part_map = _window(tokens, char_to_token, spans, lowered, query)
            ids = model.tokenizer.convert_tokens_to_ids(["[CLS]", *part_tokens, "[SEP]"])
            char = part[q]
            allowed = set(model.label_ids_of_char[char])
            rows["input_ids"].append(ids)
            rows["token_type_ids"].append([0] * len(ids))
            rows["attention_mask"].append([1] * len(ids))
            rows["phoneme_mask"].append(
                [1.0 if (i in allowed or not model.use_mask) else 0.0 for i in range(len(model.labels))]
            )
            rows["char_ids"].append(model.chars.index(char))
            rows["position_ids"].append(part_map[q] + 1)  # +1 for [CLS]
        dtypes = {"phoneme_mask": np.float32}
        return {k: np.array(v, dtype=dtypes.get(k, np.int64)) for k, v in rows.items()}

    def predict(self, hanzi: str) -> list[str | None]:
        """Tone-numbered pinyin per character of a run of Hanzi; None where G2PW has no reading."""
        import numpy as np
        from pypinyin import Style, pinyin

        model = self._load()
        text = hanzi
        if model.to_traditional is not None:
            text = model.to_traditional(hanzi)
            if len(text) != len(hanzi):
                raise TextError(f"OpenCC changed the length of {hanzi!r}")
        fallback = pinyin(to_simplified(text), neutral_tone_with_five=True, style=Style.TONE3)
        result: list[str | None] = []
        queries = []
        for i, char in enumerate(text):
            if char in model.predicted_chars:
                queries.append(i)
                result.append(None)
            elif char in model.monophonic:
                result.append(self._bopomofo_pinyin(model, model.monophonic[char]))
            else:
                result.append(fallback[i][0] if i < len(fallback) else None)
        if queries:
            probs = model.session.run(None, self._model_inputs(model, text, queries))[0]
            for i, label_id in zip(queries, np.argmax(probs, axis=1).tolist()):
                label = model.labels[label_id]
                if model.use_char_phoneme:
                    label = label.split(" ")[1]
                result[i] = self._bopomofo_pinyin(model, label)
        return result

    def sentence_pinyin(self, piece: str) -> list[str]:
        """TONE3 pinyin (tone 5 = neutral) per Hanzi, and each run of other characters as one item."""
        from pypinyin import Style, lazy_pinyin
        from pypinyin.constants import RE_HANS
        from pypinyin.contrib.tone_convert import to_tone, to_tone3
        from pypinyin.seg.simpleseg import simple_seg

        items: list[str] = []
        for run in simple_seg(piece):
            if not RE_HANS.match(run):
                items.append(run)
                continue
            for char, reading in zip(run, self.predict(run)):
                if reading is None:  # G2PW cannot read it: pypinyin for that character alone
                    reading = lazy_pinyin(char, style=Style.TONE3, neutral_tone_with_five=True)[0]
                items.append(to_tone3(to_tone(reading), neutral_tone_with_five=True))
        return items

    # --- the interface phonemize() uses (with sentence_pinyin above) -----------------------------

    def word_initials_finals(self, word: str, sentence_pinyin: list[str], start: int) -> tuple[list[str], list[str]]:
        from pypinyin.contrib.tone_convert import to_finals_tone3, to_initials

        readings = sentence_pinyin[start : start + len(word)]
        readings = self._load().polyphonic_words.get(word, readings)  # upstream correct_pronunciation
        initials, finals = [], []
        for reading in readings:
            if reading[:1].isalpha():
                initials.append(to_initials(reading))
                finals.append(to_finals_tone3(reading, neutral_tone_with_five=True))
            else:
                initials.append(reading)
                finals.append(reading)
        return initials, finals

    def g2p(self, norm_text: str) -> tuple[list[str], list[int]]:
        """Phones and word2ph of normalised Mandarin text with G2PW readings."""
        return phonemize(norm_text, pinyin_source=self)
