import pytest
import torch

import segviz
from segviz.inspect import capture, flops, summary
from segviz.nn import attention_macs
from tests.toys import ToyNet


def _toy_macs(h, w, dim=8, classes=3, heads=2):
    n = (h // 4) * (w // 4)
    stem = n * dim * 3 * 16
    per_stage = n * dim * 3 * dim + attention_macs(1, heads, n, n, dim // heads) + n * dim * dim
    head = n * dim * classes
    return stem + 2 * per_stage + head


def test_flops_match_the_analytic_count_including_attention():
    report = flops(ToyNet(), (1, 3, 32, 48))
    assert report.total == pytest.approx(_toy_macs(32, 48) / 1e9, rel=1e-9)
    assert report.per_module["stages.0.attn"] == pytest.approx(
        (96 * (8 * 24 + 8 * 8) + attention_macs(1, 2, 96, 96, 4)) / 1e9
    )


def test_flops_do_not_depend_on_device_or_attention_path():
    model = ToyNet()
    on_cpu = flops(model, (1, 3, 32, 32)).total
    on_meta = flops(model, (1, 3, 32, 32), device="meta").total
    with capture(model):
        while_recording = flops(model, (1, 3, 32, 32)).total
    assert on_cpu == on_meta == while_recording
    if torch.cuda.is_available():
        assert flops(model.cuda(), (1, 3, 32, 32)).total == on_cpu


def test_flops_restore_training_mode_and_check_shape():
    model = ToyNet().train()
    flops(model, (1, 3, 16, 16))
    assert model.training
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        flops(model, (3, 16, 16))


def test_summary_lists_blocks_with_shapes_params_and_gmacs():
    model = ToyNet()
    table = summary(model, (1, 3, 32, 32), depth=1)
    rows = {r["module"]: r for r in table.rows}
    assert list(rows) == ["stem", "stages", "head"]
    assert rows["stem"]["output_shape"] == (1, 8, 8, 8)
    assert rows["head"]["params"] == 8 * 3 + 3
    assert table.total_params == sum(p.numel() for p in model.parameters())
    assert sum(r["gmacs"] for r in table.rows) == pytest.approx(table.total_gmacs)
    text = str(table)
    assert "stages" in text and "1x8x8x8" in text and "995" in text
    with pytest.raises(ValueError, match="depth"):
        summary(model, (1, 3, 32, 32), depth=0)


def test_device_helper():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert segviz.device().type == expected
