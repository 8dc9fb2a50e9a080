"""Distributed training: ``torchrun --nproc_per_node 2 -m segviz train`` on the CPU (gloo) gives the
weights of one process training on the same global batch.

Two processes really run: the model card must say world size 2. Each takes 2 of the 4 images
of every global batch; gradients are averaged by DistributedDataParallel and BatchNorm takes
its statistics over all 4 images (``torch.nn.SyncBatchNorm`` refuses CPU tensors, so CPU runs
use segviz's AllReduceBatchNorm), so the two runs compute the same updates up to float rounding.

Why upernet-swin-nano at lr 3e-5, not segformer-nano at 1e-3: AdamW turns rounding noise into
full-size steps where a gradient is exactly zero in theory. SegFormer's decoder has such
weights (the biases of its per-stage Linear layers, whose constant shift the following
BatchNorm removes); their computed gradients are pure rounding noise (~1e-9), AdamW divides by
sqrt(v) ~ |g| and moves them by about ±lr. Two one-process runs that differ only in their
thread count already disagree there by ~1e-3 at lr 1e-3, the same as one process against two.
UperNet's convolutions in front of BatchNorm have no bias, and at lr 3e-5 every weight moves by
~1e-4 over 3 steps while the two runs agree to ~2e-6.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import segviz
from segviz.__main__ import main
from segviz.weights import read_state_dict
from tests.toys import threads

ROOT = Path(__file__).resolve().parents[1]
NAME = "upernet-swin-nano"
ARGS = ["train", NAME, "--steps", "3", "--batch-size", "4", "--size", "64", "--lr", "3e-5", "--warmup", "0",
        "--val-size", "2", "--device", "cpu", "--no-progress",
        "--set", "drop_path_rate=0.0", "--set", "dropout=0.0"]  # no random masks: they differ by rank

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="needs torch.distributed with gloo")


def launch(command, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_two_processes_equal_one_with_the_same_global_batch(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    launch([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
            "-m", "segviz", *ARGS, "--out", str(two)])
    with threads(1):  # the one-process run here, on one thread like each of the two
        assert main([*ARGS, "--out", str(one)]) == 0

    cards = {run: json.loads((run / f"{NAME}.json").read_text()) for run in (one, two)}
    assert (cards[two]["world_size"], cards[two]["per_rank_batch_size"]) == (2, 2)  # really two processes
    assert (cards[one]["world_size"], cards[one]["per_rank_batch_size"]) == (1, 4)
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())  # rank 0 wrote, once
    # the logged loss is the mean over the global batch in both
    assert cards[two]["losses"] == pytest.approx(cards[one]["losses"], rel=1e-5)

    a, b = read_state_dict(one / f"{NAME}.safetensors"), read_state_dict(two / f"{NAME}.safetensors")
    assert a.keys() == b.keys()
    difference = {k: (a[k].double() - b[k].double()).abs().max().item() for k in a}
    worst = max(difference, key=difference.get)
    assert difference[worst] <= 1e-5, f"{worst} differs by {difference[worst]:.3g}"

    # and the comparison means something: training moved the weights far more than the tolerance
    torch.manual_seed(0)
    start = segviz.create_model(NAME, num_classes=6, drop_path_rate=0.0, dropout=0.0).state_dict()
    moved = [(a[k].double() - start[k].double()).abs().max().item() for k in a if a[k].is_floating_point()]
    assert sorted(moved)[len(moved) // 2] > 2e-5  # the median tensor moved by more than twice the tolerance
