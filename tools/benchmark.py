#!/usr/bin/env python
"""Speed and memory benchmarks (never asserted in tests).

  python tools/benchmark.py data  [--help]   mapper samples/s per worker process, per region source
  python tools/benchmark.py train [--help]   s/iter, images/s and peak memory of a training step vs. its compute floor
  python tools/benchmark.py distill [--help] the distillation loss + gradient alone, per implementation
"""
import importlib
import sys

COMMANDS = {"data": "plrc_d2.benchmark.data", "train": "plrc_d2.benchmark.train",
            "distill": "plrc_d2.benchmark.distill"}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__)
        sys.exit(0 if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help") else 2)
    importlib.import_module(COMMANDS[sys.argv[1]]).main(sys.argv[2:])
