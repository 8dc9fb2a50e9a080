"""Panoptic quality of a shipped Mask2Former on held-out Scenes at several object thresholds:
``python experiments/panoptic_eval.py [--weights scenes] [--n 100] [--thresholds 0.8 0.5 0.3]``.

The paper's panoptic inference keeps a query only when its best class probability is above the
object threshold (0.8); a small model trained briefly is rarely that sure, so the sweep shows how
many objects it finds at lower thresholds."""
from __future__ import annotations

import argparse
import sys

import segviz
from segviz.data import SCENE_CLASSES, Scenes
from segviz.training import evaluate_panoptic


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mask2former-nano")
    parser.add_argument("--weights", default="scenes")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.8, 0.5, 0.3])
    args = parser.parse_args(argv)
    model = segviz.create_model(args.model, weights=args.weights).eval()
    size = segviz.zoo.find(args.model, args.weights).card["image_size"]
    data = Scenes(args.n, size, seed=0, split="val", target="panoptic")
    for threshold in args.thresholds:
        r = evaluate_panoptic(model, data, stuff_classes=(0,), object_threshold=threshold)
        counts = ", ".join(f"{SCENE_CLASSES[c]} {v['tp']}/{v['tp'] + v['fn']} found, {v['fp']} false"
                           for c, v in r["per_class"].items())
        print(f"object threshold {threshold}: PQ {r['pq']:.3f}  SQ {r['sq']:.3f}  RQ {r['rq']:.3f}  ({counts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
