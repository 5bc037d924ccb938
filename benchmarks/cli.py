"""``gsv-bench SUBCOMMAND ...``: every benchmark is a module registered in :data:`SUBCOMMANDS`.

A benchmark module defines ``add_arguments(parser)`` and ``run(args) -> int``; adding one is one
line here (``"serve": "benchmarks.serve"``).  Modules are imported only when their subcommand runs,
so ``gsv-bench --help`` stays fast and one benchmark's dependencies never burden another.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "components": ("benchmarks.components", "per-component speed of torch / ONNX Runtime backends on one bundle"),
    "serve": ("benchmarks.serve", "latency/throughput of a gsv server: concurrency sweep, Poisson arrivals, compare"),
    "quality": ("benchmarks.quality", "speaker similarity of synthesized held-out sentences (pretrained encoder)"),
    "capacity": ("benchmarks.capacity", "largest number of full-length streams with no underruns; the --max-live to use"),
    "memory": ("benchmarks.memory", "resident memory of gsv-serve with one voice after a run of requests (peak RSS)"),
    "cluster": ("benchmarks.cluster", "scale-out through the nginx balancer: 1/2/3 local replicas, overhead, spread"),
    "soak": ("benchmarks.soak", "hours of mixed traffic: errors by code, server memory growth, latency drift"),
    "receptive-field": ("benchmarks.receptive_field", "how far one input token changes the SoVITS decoder/flow/vocoder outputs"),
    "versions": ("benchmarks.versions", "v2 / v2Pro / v2ProPlus bundles side by side (GPT, decoder, registration cost)"),
    "models": ("benchmarks.models", "several models in one server: memory, cold loads, throughput, fairness, blending"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="gsv-bench", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="benchmark", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    chosen = next((a for a in argv if a in SUBCOMMANDS), None)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        p.set_defaults(module=module)
        if name == chosen:  # only the chosen benchmark's module (and its dependencies) is imported
            importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from gsv.errors import run_command

    return run_command("gsv-bench", lambda: importlib.import_module(args.module).run(args))


if __name__ == "__main__":
    raise SystemExit(main())
