"""Text-frontend speed: milliseconds per 100 characters, per language, as JSON on stdout.

Two numbers per language, both after one untimed pass (that first pass, which loads
dictionaries and models, is reported as ``first_pass_ms``); frontends that memoise words may
then run partly from their caches, as they do in a long-running server:

* ``clean_text_ms_per_100_chars``: normalisation + G2P + ids of single sentences
  (``gsv.text.cleaner.clean_text``), the cost the golden cases measure;
* ``pipeline_ms_per_100_chars``: the whole text preparation of a paragraph
  (``TextFrontend.prepare`` with cut5: sanitising, segmentation, language split, retry rule).

Usage: ``python -m benchmarks.frontend_bench [--langs zh,en,ja,ko,yue] [--repeat 5]``.
A language whose frontend is not built is reported with an ``error`` field instead.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

SENTENCES = {
    "zh": ["今天天气很好，我们去公园散步吧！", "他在2024年3月15日买了三本书，一共花了128.5元。",
           "这个问题其实并不难，只要认真想一想就能解决。", "春天来了，万物复苏，小草从地下探出头来。"],
    "en": ["Hello there, how are you doing today?", "The price is 3.14 dollars, and the meeting starts at 9:15.",
           "Dr. Smith visited the U.S. in 1999 with his friends.", "Please keep your voice down in the galleries."],
    "ja": ["こんにちは、今日はいい天気ですね。", "私は2024年に日本へ来ました。",
           "新幹線で大阪まで2時間半かかります。", "雨が降ってきたので、傘をさしました。"],
    "ko": ["안녕하세요, 만나서 반갑습니다.", "저는 2024년에 서울에 왔어요.", "오늘 날씨가 정말 좋네요!",
           "여기서 잠깐 기다려 주세요."],
    "yue": ["我哋今日去饮茶好唔好？", "佢琴日买咗三本书。", "呢度嘅嘢食好好味。", "你几点返屋企呀？"],
}


def machine_info() -> dict:
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
    }
    try:
        info["cpu_affinity"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def bench_language(lang: str, repeat: int) -> dict:
    from gsv.text.cleaner import clean_text
    from gsv.text.frontend import TextFrontend
    from gsv.text.symbols import cleaned_text_to_sequence

    sentences = SENTENCES[lang]
    # One untimed pass loads everything lazily loaded (dictionaries, models, predictors).
    t0 = time.perf_counter()
    for s in sentences:
        clean_text(s, lang)
    first_ms = (time.perf_counter() - t0) * 1000

    chars = 0
    t0 = time.perf_counter()
    for _ in range(repeat):
        for s in sentences:
            cleaned = clean_text(s, lang)
            cleaned_text_to_sequence(cleaned.phones)
            chars += len(s)
    clean_ms = (time.perf_counter() - t0) * 1000

    frontend = TextFrontend("v2")
    paragraph = "".join(sentences)
    frontend.prepare(paragraph, lang, "cut5")
    t0 = time.perf_counter()
    for _ in range(repeat):
        frontend.prepare(paragraph, lang, "cut5")
    pipe_ms = (time.perf_counter() - t0) * 1000
    return {
        "first_pass_ms": round(first_ms, 2),
        "clean_text_ms_per_100_chars": round(clean_ms / chars * 100, 3),
        "pipeline_ms_per_100_chars": round(pipe_ms / (len(paragraph) * repeat) * 100, 3),
        "chars_per_run": chars // repeat,
        "repeat": repeat,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.frontend_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--langs", default="zh,en,ja,ko,yue", help="comma-separated languages")
    parser.add_argument("--repeat", type=int, default=5, help="timed passes over the sentences")
    args = parser.parse_args(argv)
    results = {}
    for lang in [x.strip() for x in args.langs.split(",") if x.strip()]:
        if lang not in SENTENCES:
            results[lang] = {"error": "no benchmark sentences for this language"}
            continue
        try:
            results[lang] = bench_language(lang, max(1, args.repeat))
        except Exception as e:  # a frontend that is not built must not hide the others
            results[lang] = {"error": f"{type(e).__name__}: {e}"}
    json.dump({"benchmark": "frontend", "unit": "ms per 100 characters", "machine": machine_info(),
               "results": results}, sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
