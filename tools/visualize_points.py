#!/usr/bin/env python
"""Point panels: what PLRC samples from an image and what a (pre-)trained model's points attend to.

    python tools/visualize_points.py --config-file configs/plrc_pretrain.yaml \\
        --weights output/demo/pretrain/model_final.pth --input photo.jpg --output viz/

Per input image, one PNG `<output>/<image name>_points.png` (or --output some.png for one image):
the three views V_q, V_k, V_d with their region maps, the sampled points coloured by region (V_q circles, V_k squares, dashed line = the same
region), the original image with the three crop boxes, the V_q/V_d cell pairs matched for affinity
distillation (same colour = a pair), and for a few query points of V_q their cosine-similarity maps over
V_q, V_k, V_d and the whole image (encoded at 2 x S). --input is an image or a folder of images
(recursively), or use --dataset NAME to take images of a registered dataset (e.g. plrc_demo_unlabeled).
Without --weights the model is randomly initialised (the panel title says so): untrained affinities.
Views are drawn with the config's mapper and a seeded Generator, so a command reproduces its panels.
Runs on the CPU unless --device cuda. Trailing KEY VALUE pairs override the config.
"""
import argparse
import logging
import os
import sys

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger
from PIL import Image

import plrc_d2  # noqa: F401  (registers the PLRC meta-architecture and the datasets)
from plrc_d2.config import add_plrc_config
from plrc_d2.data import IMAGE_EXTENSIONS, list_images
from plrc_d2.engine.vis_hook import PanelOptions, map_sample, render_panel

logger = logging.getLogger("plrc_d2.visualize_points")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--config-file", required=True, help="a PLRC pre-training config")
    parser.add_argument("--weights", default="", help="a PLRC pre-training checkpoint (.pth); none = random init")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="an image, or a folder searched recursively for images")
    source.add_argument("--dataset", help="a registered dataset name (its first --max-images images)")
    parser.add_argument("--output", required=True,
                        help="folder for the PNG panels, or a .png file when there is one image")
    parser.add_argument("--max-images", type=int, default=8, help="at most this many images (default 8)")
    parser.add_argument("--num-query-points", type=int, default=None, help="default: PLRC_VIS.NUM_QUERY_POINTS")
    parser.add_argument("--embedding", choices=("dense", "distill"), default="dense",
                        help="dense head g (point/image losses) or distillation head h (u)")
    parser.add_argument("--momentum", action="store_true", help="use the momentum (teacher) encoder")
    parser.add_argument("--tile", type=int, default=192, help="pixels per panel tile (default 192)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the view/point sampling")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser.parse_args(argv)


def setup_cfg(args):
    cfg = get_cfg()
    add_plrc_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.DEVICE = args.device
    cfg.MODEL.WEIGHTS = ""
    cfg.freeze()
    if cfg.MODEL.META_ARCHITECTURE != "PLRC":
        raise SystemExit(f"error: {args.config_file} is not a PLRC pre-training config "
                         f"(MODEL.META_ARCHITECTURE {cfg.MODEL.META_ARCHITECTURE!r})")
    return cfg


class _RecordingCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that keeps the incompatible keys of the model it loaded (it only logs them)."""

    incompatible = None

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


def load_weights(model, path: str) -> str:
    """Loads a PLRC checkpoint into `model`; a missing or mis-shaped tensor is an error (a converted
    backbone, a detector or another depth would otherwise load in part, with only a logged warning).
    Returns a description of the weights for the panel title."""
    if not os.path.isfile(path):
        raise SystemExit(f"error: --weights {path!r} is not a file")
    checkpointer = _RecordingCheckpointer(model)
    try:
        extra = checkpointer.load(path, checkpointables=[])
    except Exception as e:  # torch/pickle raise many types for a file that is not a checkpoint
        reason = (str(e).strip().splitlines() or [""])[0][:160]
        raise SystemExit(f"error: --weights {path!r} is not a readable checkpoint ({type(e).__name__}: {reason})")
    incompatible = checkpointer.incompatible
    wrong_shape = [k for k, *_ in incompatible.incorrect_shapes]  # fvcore also lists these as missing
    problems = {"missing": [k for k in incompatible.missing_keys if k not in wrong_shape],
                "of the wrong shape": wrong_shape}
    problems = {what: keys for what, keys in problems.items() if keys}
    if problems:
        detail = "; ".join(f"{len(keys)} {what} (e.g. {', '.join(keys[:3])})" for what, keys in problems.items())
        raise SystemExit(f"error: --weights {path!r} does not fit this PLRC model: {detail}. Pass the "
                         "pre-training checkpoint (model_*.pth) of a run with the same config, not a "
                         "converted backbone or a detector.")
    iteration = extra.get("iteration")
    return path + (f" (iteration {iteration + 1})" if isinstance(iteration, int) else "")


def list_inputs(args, cfg):
    """[dataset dict] of the images to draw."""
    if args.dataset:
        from detectron2.data import DatasetCatalog
        from plrc_d2.data import ensure_datasets_registered

        ensure_datasets_registered([args.dataset], cfg.OUTPUT_DIR)
        return DatasetCatalog.get(args.dataset)[: args.max_images]
    if os.path.isdir(args.input):
        files = [os.path.join(args.input, f) for f in list_images(args.input)]
    elif os.path.isfile(args.input):
        files = [args.input]
    else:
        raise SystemExit(f"error: --input {args.input!r} does not exist")
    if not files:
        raise SystemExit(f"error: no images ({', '.join(IMAGE_EXTENSIONS)}) under {args.input!r}")
    return [{"file_name": f, "image_id": i} for i, f in enumerate(files[: args.max_images])]


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logger(name="plrc_d2")
    cfg = setup_cfg(args)
    from plrc_d2.data.mapper import PLRCDatasetMapper

    torch.manual_seed(args.seed)  # random init is reproducible too
    model = build_model(cfg)
    source = load_weights(model, args.weights) if args.weights else "none: RANDOM INIT (untrained affinities)"
    mapper = PLRCDatasetMapper(cfg)
    m = cfg.MODEL.PLRC
    options = PanelOptions(
        num_query_points=args.num_query_points if args.num_query_points is not None else cfg.PLRC_VIS.NUM_QUERY_POINTS,
        map_size=int(m.MAP_SIZE), match_radius=float(m.MATCH_RADIUS), embedding=args.embedding,
        momentum=args.momentum)
    inputs = list_inputs(args, cfg)
    single_file = args.output.lower().endswith(".png")
    if single_file and len(inputs) > 1:
        raise SystemExit(f"error: --output {args.output!r} is one file but there are {len(inputs)} images; "
                         "give a folder or --max-images 1")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)) if single_file else args.output, exist_ok=True)
    written, skipped = 0, 0
    for index, dataset_dict in enumerate(inputs):
        mapped = map_sample(mapper, dataset_dict, args.seed + index)
        if mapped is None:
            skipped += 1
            continue
        name = os.path.splitext(os.path.basename(dataset_dict["file_name"]))[0]
        title = f"{name} | weights: {source} | {args.embedding} embeddings, " \
                f"{'momentum' if args.momentum else 'online'} encoder"
        notes = [f"config: {args.config_file}", f"regions: {cfg.INPUT.PLRC.REGION_SOURCE}",
                 f"view size S={cfg.INPUT.PLRC.CROP_SIZE}, whole image at {options.whole_image_scale}S"]
        panel = render_panel(model, mapped, input_format=cfg.INPUT.FORMAT, options=options, title=title,
                             notes=notes, tile=args.tile)
        path = args.output if single_file else os.path.join(args.output, f"{name}_points.png")
        Image.fromarray(panel).save(path)
        logger.info(f"wrote {path}")
        written += 1
    print(f"{written} panel(s) written to {args.output}, {skipped} unreadable image(s) skipped")
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
