"""Speed and memory benchmarks behind tools/benchmark.py (never asserted in tests)."""
import argparse

__all__ = ["at_least"]


def at_least(lo: int):
    """argparse type: an int >= lo, so a nonsense count is a usage error rather than a traceback mid-run."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum {lo}")
        return value

    parse.__name__ = f"int >= {lo}"
    return parse
