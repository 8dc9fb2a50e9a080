"""Ship a finished training run into the zoo: ``python experiments/ship.py RUN_DIR TAG``.

RUN_DIR is the ``--out`` folder of ``python -m segviz train NAME`` (it holds NAME.safetensors and
the card NAME.json). This script

1. stores the weights as float16 in ``segviz/zoo/NAME.TAG.safetensors`` (half the bytes; the
   zoo must stay small),
2. loads them back into a fresh float32 model built from the card's config, exactly as
   ``segviz.create_model(NAME, weights=TAG)`` will, and measures the mIoU of these *stored*
   weights on the held-out Scenes split (the first ``--eval-n`` images, seed 0),
3. writes the card ``segviz/zoo/NAME.TAG.json``: the training card plus ``shipped`` (dtype, bytes,
   the evaluation set's description and its mIoU), which ``tests/test_zoo.py`` measures again.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

import segviz
from segviz.data import Scenes
from segviz.training import evaluate, evaluate_panoptic
from segviz.weights import read_state_dict
from segviz.zoo import ZOO_DIR, card_path


def ship(run_dir: Path, tag: str, eval_n: int = 100) -> dict:
    cards = sorted(p for p in run_dir.glob("*.json") if p.name != "checkpoint.json")
    if len(cards) != 1:
        raise ValueError(f"{run_dir} should hold exactly one model card (NAME.json), found {[p.name for p in cards]}")
    card = json.loads(cards[0].read_text())
    name = cards[0].stem
    state = read_state_dict(cards[0].with_suffix(".safetensors"))
    target = ZOO_DIR / f"{name}.{tag}.safetensors"
    # written outside the zoo first: the zoo lists *.safetensors, and an entry must not show up
    # before its card exists
    staging = Path(tempfile.mkdtemp()) / target.name
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    save_file(half, str(staging))
    staging.chmod(0o644)  # package data: readable by everyone

    config = {k: tuple(v) if isinstance(v, list) else v for k, v in card["config"].items()}
    model = segviz.create_model(name, **config)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in read_state_dict(staging).items()})
    # a video model (train_frames = T) is measured per frame on held-out clips of T frames
    held_out = Scenes(eval_n, size=card["dataset"]["train"]["size"], seed=0, split="val",
                      frames=getattr(model, "train_frames", None))
    torch.manual_seed(0)
    card["shipped"] = {
        "tag": tag,
        "dtype": "float16",
        "bytes": staging.stat().st_size,
        "eval": held_out.description(),
        "val_miou": evaluate(model, held_out, batch_size=16, device="cpu"),
    }
    if callable(getattr(model, "panoptic", None)) and not getattr(model, "train_frames", None):
        # a set-prediction model: also its panoptic quality on the same scenes, object by object
        objects = Scenes(eval_n, size=held_out.size, seed=0, split="val", target="panoptic")
        pq = evaluate_panoptic(model, objects, stuff_classes=(0,), batch_size=16, device="cpu")
        card["shipped"]["panoptic"] = {"eval": objects.description(), "stuff_classes": [0],
                                       **{k: pq[k] for k in ("pq", "sq", "rq")}}
    card_path(target).write_text(json.dumps(card, indent=2) + "\n")
    shutil.move(staging, target)
    return card


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("tag")
    parser.add_argument("--eval-n", type=int, default=100)
    args = parser.parse_args(argv)
    card = ship(args.run_dir, args.tag, args.eval_n)
    print(f"shipped {args.run_dir} as {args.tag}: {card['shipped']['bytes'] / 1e6:.2f} MB, "
          f"held-out mIoU of the stored weights {card['shipped']['val_miou']:.4f}"
          + (f", PQ {card['shipped']['panoptic']['pq']:.4f}" if "panoptic" in card["shipped"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
