"""`python tools/benchmark.py data`: PLRCDatasetMapper samples/s in one process on one core, per region source.

Images: procedural photo-like scenes (plrc_d2/data/demo_scenes.py: textured background, objects, noise),
500 x 375 JPEGs (quality 90) written to a temporary folder, with instance annotations for the
"annotations" source. Each sample = decode + region map + three S-px views + R x P points per view.
"""
import argparse
import os
import tempfile
import time

import cv2
import numpy as np
import torch

from . import at_least


def _make_images(folder: str, count: int, height: int, width: int):
    from detectron2.structures import BoxMode

    from plrc_d2.data.demo_scenes import render_scene

    dicts = []
    for i in range(count):
        image, instances = render_scene(np.random.default_rng([1234, i]), shape=(height, width))
        path = os.path.join(folder, f"{i:04d}.jpg")
        cv2.imwrite(path, image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
        anns = [{"bbox": a["bbox"], "bbox_mode": BoxMode.XYWH_ABS, "segmentation": a["segmentation"],
                 "category_id": a["category_id"] - 1, "iscrowd": 0} for a in instances]
        dicts.append({"file_name": path, "image_id": i, "height": height, "width": width, "annotations": anns})
    return dicts


def _mapper(args, source: str, shared_regions: int):
    from detectron2.config import get_cfg

    from plrc_d2.config import add_plrc_config
    from plrc_d2.data import PLRCDatasetMapper

    cfg = add_plrc_config(get_cfg())
    cfg.merge_from_list(["INPUT.FORMAT", "RGB", "INPUT.PLRC.REGION_SOURCE", source,
                         "INPUT.PLRC.CROP_SIZE", args.crop_size, "INPUT.PLRC.POINTS_PER_REGION", args.points,
                         "INPUT.PLRC.NUM_SHARED_REGIONS", shared_regions] + args.opts)
    return PLRCDatasetMapper(cfg)


def _measure(mapper, dicts, samples: int, warmup: int = 5, block: int = 20):
    """(samples per wall second, samples per CPU second of this process, median and slowest / fastest
    samples per CPU second over blocks of `block` samples). On a shared machine the CPU-time rate is the per-core
    figure; the wall rate also counts time the process waited for a core; the block rates show how much the
    machine's speed moved during the run (the median is the typical per-core rate)."""
    for i in range(warmup):
        mapper(dicts[i % len(dicts)], rng=np.random.default_rng([0, i]))
    wall, cpu = time.perf_counter(), time.process_time()
    block_rates, block_start, in_block = [], cpu, 0
    for i in range(samples):
        assert mapper(dicts[i % len(dicts)], rng=np.random.default_rng([1, i])) is not None
        in_block += 1
        if in_block == block:
            now = time.process_time()
            block_rates.append(block / max(now - block_start, 1e-9))
            block_start, in_block = now, 0
    rates = block_rates or [samples / max(time.process_time() - cpu, 1e-9)]
    return (samples / (time.perf_counter() - wall), samples / (time.process_time() - cpu),
            float(np.median(rates)), min(rates), max(rates))


def _measure_loader(mapper, dicts, workers: int, samples: int, batch_size: int = 32) -> float:
    """Samples per wall second through PLRCTrainLoader with `workers` worker processes (after one batch)."""
    from plrc_d2.data import PLRCTrainLoader, PLRCTrainStream

    loader = PLRCTrainLoader(PLRCTrainStream(dicts, mapper, seed=0, batch_size=batch_size), workers)
    batches = iter(loader)
    next(batches)
    num_batches = max(1, samples // batch_size)
    start = time.perf_counter()
    for _ in range(num_batches):
        next(batches)
    return num_batches * batch_size / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="tools/benchmark.py data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", nargs="+", default=["grid", "felzenszwalb", "annotations"])
    parser.add_argument("--shared-regions", type=at_least(1), nargs="+", default=[1, 16],
                        help="INPUT.PLRC.NUM_SHARED_REGIONS values (R); 1 = reference, 16 = all 4x4 cells")
    parser.add_argument("--crop-size", type=at_least(32), default=224, help="S, pixels")
    parser.add_argument("--points", type=at_least(1), default=32, help="P, points per region per view")
    parser.add_argument("--images", type=at_least(1), default=64, help="distinct 500x375 images generated")
    parser.add_argument("--samples", type=at_least(1), default=300, help="timed samples per setting")
    parser.add_argument("--profile", action="store_true", help="cProfile the first setting, print the top 25")
    parser.add_argument("--workers", type=at_least(0), default=0,
                        help="also time the full PLRCTrainLoader with this many worker processes (0 = skip)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="more KEY VALUE config overrides")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)  # one core per worker process, as in the data loader
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        dicts = _make_images(folder, args.images, 375, 500)
        print(f"{args.images} images 500x375 JPEG, S={args.crop_size}, P={args.points}, 3 views, one process, "
              f"cv2/torch threads = 1")
        print(f"{'region source':<14} {'R':>3} {'samples/s (wall)':>17} {'samples/CPU-s':>14} "
              f"{'CPU ms/sample':>14}  samples/CPU-s per 20-sample block: median (min-max)")
        for source in args.sources:
            for r in args.shared_regions:
                mapper = _mapper(args, source, r)
                if args.profile:
                    import cProfile
                    import pstats

                    profile = os.path.join(folder, "data.prof")
                    cProfile.runctx("_measure(mapper, dicts, args.samples)", globals(), locals(), profile)
                    pstats.Stats(profile).sort_stats("cumulative").print_stats(25)
                    return
                wall_rate, cpu_rate, median, low, high = _measure(mapper, dicts, args.samples)
                print(f"{source:<14} {r:>3} {wall_rate:>17.1f} {cpu_rate:>14.1f} {1000.0 / cpu_rate:>14.2f}  "
                      f"{median:.1f} ({low:.1f}-{high:.1f})", flush=True)
                if args.workers:
                    rate = _measure_loader(mapper, dicts, args.workers, args.samples)
                    print(f"{'':<14} {'':>3} loader, {args.workers} workers: {rate:.1f} samples/s "
                          f"({rate / args.workers:.1f} per worker)", flush=True)
