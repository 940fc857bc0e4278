"""Reading a finished detectron2 run's evaluation results back from its metrics.json."""
import json
import os

__all__ = ["final_eval_metrics"]


def final_eval_metrics(output_dir: str, keys) -> dict:
    """{key: value} of the last value of every key in `output_dir`/metrics.json, or {} unless all keys are
    there (the run has not evaluated yet). Lines that are not JSON (a run killed mid-write) are skipped."""
    found, path = {}, os.path.join(output_dir, "metrics.json")
    if not os.path.exists(path):
        return found
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            found.update({k: record[k] for k in keys if k in record})
    return found if len(found) == len(keys) else {}
