"""Shared test helpers: a tiny attention model (not a segviz architecture), a model built on the
meta device, and a thread-count setting for a test module."""
import contextlib

import torch
from torch import nn

import segviz
from segviz.nn import recording
from segviz.nn import attention, map_to_tokens, tokens_to_map


class ToyAttention(nn.Module):
    def __init__(self, dim=8, heads=2):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, hw):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v, module=self, q_hw=hw, k_hw=hw)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class ToyStage(nn.Module):
    def __init__(self, dim=8):
        super().__init__()
        self.attn = ToyAttention(dim)

    def forward(self, x):
        hw = x.shape[-2:]
        t = map_to_tokens(x)
        out = tokens_to_map(t + self.attn(t, tuple(hw)), tuple(hw))
        if recording.wants(self, "feature"):
            recording.emit(self, "feature", features=out)
        return out


class ToyNet(nn.Module):
    def __init__(self, num_classes=3, dim=8):
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 4, 4)
        self.stages = nn.ModuleList([ToyStage(dim), ToyStage(dim)])
        self.head = nn.Conv2d(dim, num_classes, 1)

    def forward(self, x):
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)


def meta_model(name, **overrides):
    """``segviz.create_model(name, **overrides)`` on the meta device: shapes and counts, no data."""
    with torch.device("meta"):
        return segviz.create_model(name, **overrides)


@contextlib.contextmanager
def threads(n: int):
    """Run the block with ``n`` torch threads, then restore the previous number."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
