"""Reading a finished detectron2 run's evaluation results back from its metrics.json."""
import json
import os

__all__ = ["final_eval_metrics", "first_and_last"]


def _records(output_dir: str):
    """The JSON lines of `output_dir`/metrics.json; lines that are not JSON (a run killed mid-write) are skipped."""
    path = os.path.join(output_dir, "metrics.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        for line in f:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def final_eval_metrics(output_dir: str, keys) -> dict:
    """{key: value} of the last value of every key in `output_dir`/metrics.json, or {} unless all keys are
    there (the run has not evaluated yet)."""
    found = {}
    for record in _records(output_dir):
        found.update({k: record[k] for k in keys if k in record})
    return found if len(found) == len(keys) else {}


def first_and_last(output_dir: str, keys) -> dict:
    """{key: (first, last) logged value} of a training run's metrics.json, for the keys it logged: how far
    a run moved (detectron2 logs the median over its 20-iteration window)."""
    out = {}
    for record in _records(output_dir):
        for k in keys:
            if k in record:
                out[k] = (out[k][0], record[k]) if k in out else (record[k], record[k])
    return out
