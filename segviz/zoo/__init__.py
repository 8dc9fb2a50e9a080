"""The zoo: small trained ``-nano`` weights shipped inside the package, each with its model card.

    segviz.list_weights()                                   # every shipped (model, tag), with its mIoU
    model = segviz.create_model("segformer-nano", weights="scenes")

Every entry was trained on :class:`segviz.data.Scenes` with ``python -m segviz train`` (the card
holds the exact command, the config, the data, steps, seed, device and wall time), then stored
here as float16 safetensors by ``experiments/ship.py``, which measured the *stored* weights'
mIoU on the held-out split named in the card (``card["shipped"]``). ``tests/test_zoo.py``
measures it again and compares.

Tags: ``scenes`` is the model trained with seed 0 at its registered config; ``scenes-seedN``
the same recipe with seed N (for the spread over seeds); a tag with more words, such as
``scenes-r16-seed0``, was trained at another config, which the card's ``config`` holds and
:func:`segviz.create_model` applies.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

ZOO_DIR = Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class WeightEntry:
    """One shipped weight file: ``model`` (registered name), ``tag``, ``path`` (safetensors) and its ``card``."""

    model: str
    tag: str
    path: Path
    card: dict = dataclasses.field(repr=False)

    @property
    def config(self) -> dict:
        """The model's config as trained (lists turned back into tuples)."""
        return {k: _tuples(v) for k, v in self.card["config"].items()}

    @property
    def val_miou(self) -> float:
        """mIoU of the stored (float16) weights on the card's held-out set."""
        return float(self.card["shipped"]["val_miou"])

    def describe(self) -> str:
        """One sentence from the card: parameters, how it was trained, and its held-out mIoU."""
        c, shipped = self.card, self.card["shipped"]
        stages = [c]
        while (stages[-1].get("init") or {}).get("card"):  # runs started from an earlier run's weights
            stages.append(stages[-1]["init"]["card"])
        def items(s: dict) -> str:  # a clip model trains on clips of T frames
            frames = ((s.get("dataset") or {}).get("train") or {}).get("frames")
            return f"Scenes clips of {frames} frames" if frames else "Scenes images"

        trained = " after ".join(f"{s['steps']} steps of {s['batch_size']} {items(s)} ({s['image_size']} px)"
                                 for s in stages)
        minutes = sum(s["wall_time_s"] for s in stages) / 60
        frames = shipped["eval"].get("frames")
        held_out = f"{shipped['eval']['n']} val clips, every frame" if frames else f"{shipped['eval']['n']} val scenes"
        return (f"{self.model}, weights {self.tag!r}: {c['params']:,} parameters, trained {trained} "
                f"on {c['device'].upper()} in {minutes:.0f} min; held-out mIoU {shipped['val_miou']:.3f} "
                f"({held_out})")

    def __str__(self) -> str:
        c = self.card
        return (f"{self.model:<20} {self.tag:<18} mIoU {self.val_miou:.3f}  {c['params']:>9,} params  "
                f"{c['steps']:>5} steps  seed {c['seed']}  {c['device']}  {c['wall_time_s'] / 60:.1f} min")


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def card_path(weights: Path) -> Path:
    """The card beside a weight file: ``NAME.TAG.safetensors`` -> ``NAME.TAG.json``."""
    return weights.with_suffix(".json")


def list_weights(model: str | None = None) -> list[WeightEntry]:
    """The shipped weights (all, or those of one registered ``model``), sorted by model and tag.

    Files are named ``MODEL.TAG.safetensors`` with a card ``MODEL.TAG.json`` beside them."""
    entries = []
    for path in sorted(ZOO_DIR.glob("*.safetensors")):
        name, _, tag = path.name.removesuffix(".safetensors").partition(".")
        if model is not None and name != model:
            continue
        card = json.loads(card_path(path).read_text())
        entries.append(WeightEntry(name, tag, path, card))
    return entries


def looks_like_tag(weights) -> bool:
    """True when ``weights`` names a zoo tag rather than a file: a plain word with no path
    separator and no file suffix (``"scenes"``, ``"scenes-seed1"``)."""
    return isinstance(weights, str) and weights != "" and not any(c in weights for c in "/\\.")


def find(model: str, tag: str) -> WeightEntry:
    """The entry for ``model`` and ``tag``; ``ValueError`` listing what is shipped otherwise."""
    for entry in list_weights(model):
        if entry.tag == tag:
            return entry
    shipped = ", ".join(f"{e.model}:{e.tag}" for e in list_weights()) or "none"
    raise ValueError(
        f"no shipped weights {tag!r} for {model!r}; shipped (model:tag): {shipped}. "
        "Pass a file path to load your own checkpoint."
    )
