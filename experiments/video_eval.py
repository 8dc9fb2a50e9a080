"""Held-out evaluation of a video Mask2Former: per-frame mIoU and whether tubes keep identity.

    python experiments/video_eval.py [--weights scenes] [--clips 100] [--frames 4] [--size 128]

* per-frame mIoU: ``segviz.training.evaluate`` on ``Scenes(clips, size, seed=0, split="val",
  frames=T)`` (every frame of every clip one image), the number ``experiments/ship.py`` stores;
* tube identity: in every held-out clip the queries are matched to the objects *frame by frame*
  (the image model's Hungarian cost on that frame alone,
  :func:`segviz.models.mask2former_video.frame_assignments`); an object keeps its identity
  from one frame to the next when the same query wins it in both. Reported: the fraction of
  (object, consecutive visible frames) pairs with the same query, and the fraction of objects
  whose query never changes. The background tube is left out (objects only).
* the same numbers for the image model ``mask2former-nano`` (its shipped weights) run on the
  frames one at a time, as a reference: its queries are not tied across frames by anything but
  their learned habits (a query that prefers one class or one region keeps winning it).
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

import segviz
from segviz.data import Scenes
from segviz.models.mask2former_video import tube_identity
from segviz.training import evaluate


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="scenes", help="a zoo tag or a .safetensors path")
    parser.add_argument("--clips", type=int, default=100)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--image-weights", default="scenes", help="mask2former-nano weights for the reference")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = segviz.create_model("mask2former-video-nano", weights=args.weights).eval()
    image_model = segviz.create_model("mask2former-nano", weights=args.image_weights).eval()
    data = Scenes(args.clips, args.size, seed=0, split="val", frames=args.frames)
    torch.manual_seed(0)
    report = {"clips": args.clips, "frames": args.frames, "size": args.size,
              "per_frame_miou": evaluate(model, data, batch_size=8, device="cpu")}
    frames = [(x[f], y[f]) for x, y in (data[i] for i in range(len(data))) for f in range(args.frames)]
    report["image_model_per_frame_miou"] = evaluate(image_model, frames, batch_size=16, device="cpu")
    objects = Scenes(args.clips, args.size, seed=0, split="val", target="panoptic", frames=args.frames)
    report.update(tube_identity(model, objects, image_model))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
