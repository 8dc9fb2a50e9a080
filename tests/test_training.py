"""segviz.training: mIoU against hand-computed cases, the trainer, and its weight cache."""
import json
import math
import os
import warnings

import numpy as np
import pytest
import torch

import segviz
from torch import nn

from segviz.data import Shapes
from segviz.training import cache_dir, miou, train
from tests.toys import threads


# --------------------------------------------------------------------------- mIoU
TARGET = torch.tensor([[0, 0, 1], [0, 1, 1], [2, 2, 2]])
PRED = torch.tensor([[0, 1, 1], [0, 1, 1], [2, 2, 0]])


def test_miou_perfect_and_disjoint():
    assert miou(TARGET, TARGET, 3) == 1.0
    assert miou(torch.ones(4, 4, dtype=torch.long), torch.zeros(4, 4, dtype=torch.long), 2) == 0.0


def test_miou_partial_by_hand():
    # class 0: target {(0,0),(0,1),(1,0)}, pred {(0,0),(1,0),(2,2)}        -> I 2, U 4
    # class 1: target {(0,2),(1,1),(1,2)}, pred {(0,1),(0,2),(1,1),(1,2)} -> I 3, U 4
    # class 2: target {(2,0),(2,1),(2,2)}, pred {(2,0),(2,1)}              -> I 2, U 3
    expected = (2 / 4 + 3 / 4 + 2 / 3) / 3
    assert miou(PRED, TARGET, 3) == pytest.approx(expected)
    # classes absent from both maps do not enter the mean
    assert miou(PRED, TARGET, 7) == pytest.approx(expected)
    # arrays and batches work; a batch is counted as one big map
    assert miou(PRED.numpy(), TARGET.numpy(), 3) == pytest.approx(expected)
    assert miou(torch.stack([PRED, PRED]), torch.stack([TARGET, TARGET]), 3) == pytest.approx(expected)


def test_miou_partial_2x2():
    # class 0: target {(0,0),(0,1)}, pred {(0,0)} -> 1/2; class 1: target {(1,0),(1,1)}, pred the other three -> 2/3
    pred, target = torch.tensor([[0, 1], [1, 1]]), torch.tensor([[0, 0], [1, 1]])
    assert miou(pred, target, 2) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_miou_ignore_index():
    target = TARGET.clone()
    target[2, 2] = 255  # the one pixel of class 2 predicted as 0 is now ignored
    # class 0: target {(0,0),(0,1),(1,0)}, pred {(0,0),(1,0)} -> 2/3; class 1: 3/4; class 2: 2/2
    assert miou(PRED, target, 3, ignore_index=255) == pytest.approx((2 / 3 + 3 / 4 + 1) / 3)
    assert math.isnan(miou(PRED, torch.full_like(TARGET, 255), 3, ignore_index=255))


@pytest.mark.parametrize(
    "pred, target, k",
    [
        (PRED, TARGET[:2], 3),  # shapes differ
        (PRED.float(), TARGET, 3),  # logits, not labels
        (PRED, TARGET, 2),  # class 2 out of range
        (PRED, TARGET - 1, 3),  # negative class
        (PRED, TARGET, 0),
    ],
)
def test_miou_bad_input(pred, target, k):
    with pytest.raises(ValueError):
        miou(pred, target, k)


# --------------------------------------------------------------------------- trainer
def conv_bn_relu(c_in, c_out, dilation=1):
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class TinyNet(nn.Sequential):
    """A few Conv-BN-ReLU layers predicting at 1/2 resolution (so the trainer must upsample)."""

    def __init__(self, width=32, num_classes=5):
        super().__init__(
            conv_bn_relu(3, width // 2),
            nn.MaxPool2d(2),
            conv_bn_relu(width // 2, width),
            conv_bn_relu(width, width, dilation=2),
            conv_bn_relu(width, width, dilation=4),
            nn.Conv2d(width, num_classes, 1),
        )
        self.segviz_name = "tinynet"
        self.segviz_config = {"width": width, "num_classes": num_classes}


def tiny(seed=0, width=4):
    torch.manual_seed(seed)
    return TinyNet(width)


FAST = dict(dataset=Shapes(8, size=16, seed=0), val=Shapes(4, size=16, seed=9), steps=3, batch_size=4, progress=False)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGVIZ_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_cache_dir_env_and_default(cache, monkeypatch, tmp_path):
    assert cache_dir() == cache
    first = train(tiny(), **FAST)
    assert first.cache_path.parent == cache and first.cache_path.suffix == ".safetensors"
    assert first.cache_path.exists() and first.cache_path.with_suffix(".json").exists()
    assert not list(cache.glob("*.tmp"))
    monkeypatch.delenv("SEGVIZ_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "segviz"


def test_cache_hit_gives_identical_weights_and_numbers(cache):
    first = train(tiny(seed=0), **FAST)
    assert not first.from_cache and len(first.losses) == 3 and 0 <= first.val_miou <= 1
    trained = weights(first.model)
    again = train(tiny(seed=0), **FAST)  # the same start: everything must come from the cache
    assert again.from_cache and again.cache_path == first.cache_path
    assert_same_weights(weights(again.model), trained)
    assert again.losses == first.losses and again.val_miou == first.val_miou
    assert not again.model.training
    other_start = train(tiny(seed=1), **FAST)  # other starting weights are another experiment
    assert not other_start.from_cache and other_start.cache_path != first.cache_path


def test_training_is_deterministic_and_changes_weights():
    a, b, c = tiny(), tiny(), tiny()
    before = weights(a)
    ra = train(a, **FAST, cache=False)
    rb = train(b, **FAST, cache=False)
    rc = train(c, **{**FAST, "seed": 1}, cache=False)
    assert ra.cache_path is None and not ra.from_cache
    assert ra.losses == rb.losses and ra.val_miou == rb.val_miou
    assert_same_weights(weights(a), weights(b))
    assert rc.losses != ra.losses
    assert not torch.equal(weights(a)["0.0.weight"], before["0.0.weight"])
    assert not a.training


@pytest.mark.parametrize(
    "change",
    [
        {"steps": 4},
        {"seed": 1},
        {"lr": 3e-3},
        {"batch_size": 2},
        {"dataset": Shapes(8, size=16, seed=1)},
        {"dataset": Shapes(9, size=16, seed=0)},
        {"model": "wider"},
    ],
)
def test_any_change_gives_a_different_key(cache, change):
    base = train(tiny(), **FAST)
    change = dict(change)
    model = tiny(width=6) if change.pop("model", None) else tiny()
    other = train(model, **{**FAST, **change})
    assert not other.from_cache and other.cache_path != base.cache_path
    assert len(list(cache.glob("*.safetensors"))) == 2


def corrupt_weights(path):
    path.write_bytes(b"this is not a safetensors file")


def corrupt_metadata(path):
    path.with_suffix(".json").write_text("{not json")


def foreign_key(path):
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["key"]["steps"] = 999
    path.with_suffix(".json").write_text(json.dumps(meta))


def wrong_shapes(path):
    from safetensors.torch import save_file

    save_file({k: torch.zeros(1) for k in tiny().state_dict()}, str(path))


def missing_weights(path):
    path.unlink()


@pytest.mark.parametrize("damage", [corrupt_weights, corrupt_metadata, foreign_key, wrong_shapes, missing_weights])
def test_broken_cache_warns_and_rebuilds(cache, damage):
    first = train(tiny(), **FAST)
    trained = weights(first.model)
    damage(first.cache_path)
    with pytest.warns(UserWarning, match="rebuilt"):
        rebuilt = train(tiny(), **FAST)
    assert not rebuilt.from_cache
    assert_same_weights(weights(rebuilt.model), trained)  # retrained from the same start
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        third = train(tiny(), **FAST)  # and the cache entry was overwritten with a good one
    assert third.from_cache


def test_unwritable_cache_warns_but_trains(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SEGVIZ_CACHE", str(blocker))
    with pytest.warns(UserWarning, match="could not write"):
        result = train(tiny(), **FAST)
    assert result.cache_path is None and len(result.losses) == 3


def test_default_validation_set_and_progress_bar(cache, capsys):
    result = train(tiny(), Shapes(8, size=16, seed=0), steps=2, batch_size=4, cache=False)
    assert result.val_miou is not None
    err = capsys.readouterr().err
    assert "loss=" in err and "2/2" in err and f"val_mIoU={result.val_miou:.3f}" in err


def test_dataset_without_description_is_not_cached(cache):
    class Plain(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return Shapes(4, size=16)[i]

    result = train(tiny(), Plain(), steps=1, batch_size=2, progress=False)
    assert result.cache_path is None and result.val_miou is None
    result = train(tiny(), Shapes(4, size=16), val=Plain(), steps=1, batch_size=2, progress=False)
    assert result.cache_path is None and 0 <= result.val_miou <= 1
    assert not cache.exists()


@pytest.mark.parametrize(
    "kwargs",
    [dict(steps=0), dict(batch_size=0), dict(lr=0), dict(lr=-1e-3), dict(weight_decay=-1), dict(seed=-1), dict(steps=2.5)],
)
def test_bad_settings(kwargs):
    with pytest.raises(ValueError):
        train(tiny(), **{**FAST, **kwargs}, cache=False)


def test_model_must_return_logits():
    class Dicty(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 5, 1)

        def forward(self, x):
            return {"logits": self.conv(x)}

    with pytest.raises(ValueError, match="logits"):
        train(Dicty(), **FAST, cache=False)


def test_small_conv_net_learns_shapes(cache):
    """A few Conv-BN-ReLU layers get well above chance on Shapes within a small CPU budget."""
    val = Shapes(64, size=32, seed=1000)
    labels = torch.stack([val[i][1] for i in range(len(val))])
    # chance baseline: predict the majority class (background) everywhere
    majority = int(torch.bincount(labels.flatten()).argmax())
    chance = miou(torch.full_like(labels, majority), labels, 5)
    torch.manual_seed(0)
    model = TinyNet(32)
    with threads(1):  # small convolutions: one thread is as fast, and ten times faster on a busy machine
        result = train(model, Shapes(512, size=32, seed=0), steps=300, batch_size=16, lr=3e-3, val=val, progress=False)
    print(f"val mIoU {result.val_miou:.3f} vs majority-class baseline {chance:.3f}")
    assert chance < 0.2
    assert result.val_miou > 0.5 and result.val_miou > chance + 0.3
    assert np.mean(result.losses[-10:]) < 0.5 * np.mean(result.losses[:10])
    assert not result.model.training


def test_cache_key_follows_starting_weights_and_inference_settings():
    import segviz
    from segviz.training import cache_key

    data = Shapes(4, size=32, seed=0)
    torch.manual_seed(0)
    a = segviz.create_model("segformer-nano")
    torch.manual_seed(0)
    same = segviz.create_model("segformer-nano")
    torch.manual_seed(1)
    other = segviz.create_model("segformer-nano")
    assert cache_key(a, data, None) == cache_key(same, data, None)
    assert cache_key(a, data, None)["init"] != cache_key(other, data, None)["init"]
    stage1 = "encoder.stages.0.blocks.0.attn"
    assert cache_key(a, data, None)["inference"][stage1] == {"ratio": 8, "pool": "avg"}
    with segviz.isr(a, encoder=(16, 8, 2, 1)):
        assert cache_key(a, data, None)["inference"][stage1] == {"ratio": 16, "pool": "avg"}
        assert cache_key(a, data, None) != cache_key(same, data, None)
    with segviz.isr(a, encoder=(8, 4, 2, 1), pool="max"):
        assert {s["pool"] for s in cache_key(a, data, None)["inference"].values()} == {"max"}
        assert cache_key(a, data, None) != cache_key(same, data, None)
    assert cache_key(a, data, None) == cache_key(same, data, None)  # restored: the same key again


def test_cache_key_of_a_model_without_inference_settings_is_empty():
    from segviz.training import cache_key

    assert cache_key(tiny(), Shapes(4, size=16), None)["inference"] == {}


def test_cache_key_reads_any_inference_setting():
    """A new kind of knob (not ISR) is picked up through segviz.nn.settings, by module name."""
    from segviz.nn.settings import InferenceSetting
    from segviz.training import cache_key

    class Knob(InferenceSetting, nn.Identity):
        window = 7

        def inference_state(self):
            return {"window": self.window}

    model = tiny()
    model.append(Knob())
    data = Shapes(4, size=16)
    before = cache_key(model, data, None)
    assert before["inference"] == {"6": {"window": 7}}
    model[6].window = 5
    assert cache_key(model, data, None)["inference"] == {"6": {"window": 5}}
    assert cache_key(model, data, None) != before


# --------------------------------------------------------------------------- refusals: lr, weight decay, device
@pytest.mark.parametrize("lr, shown", [
    (0, "got 0.0"), (-1e-3, "got -0.001"), (float("nan"), "got nan"), (float("inf"), "got inf"),
    (-float("inf"), "got -inf"), (np.float32("nan"), "got nan"), (torch.tensor(float("inf")), "got inf"),
    (True, "got True (bool)"), ("1e-3", "got '1e-3' (str)"), (None, "got None (NoneType)"),
    (1e-3 + 0j, "got (0.001+0j) (complex)"), (torch.tensor([1e-3, 1e-3]), "(Tensor)"), (np.bool_(True), "(bool)"),
])
def test_bad_learning_rates_are_refused_with_what_is_allowed(lr, shown):
    with pytest.raises(ValueError) as err:
        train(tiny(), **FAST, lr=lr, cache=False)
    assert str(err.value).startswith("lr must be a finite number > 0 (e.g. 1e-3), got ")
    assert shown in str(err.value)


@pytest.mark.parametrize("weight_decay, shown", [
    (-0.01, "got -0.01"), (float("nan"), "got nan"), (float("inf"), "got inf"), (np.float64("-inf"), "got -inf"),
    (False, "got False (bool)"), ("0.01", "got '0.01' (str)"), (None, "got None (NoneType)"),
])
def test_bad_weight_decays_are_refused_with_what_is_allowed(weight_decay, shown):
    with pytest.raises(ValueError) as err:
        train(tiny(), **FAST, weight_decay=weight_decay, cache=False)
    assert str(err.value).startswith("weight_decay must be a finite number >= 0 (e.g. 0.01), got ")
    assert shown in str(err.value)


@pytest.mark.parametrize("lr, weight_decay", [
    (np.float32(1e-3), np.float64(0.0)), (torch.tensor(1e-3), torch.tensor(0.01)), (np.int64(1), 0), (1, np.int32(0)),
])
def test_numpy_and_torch_scalars_are_accepted_as_python_floats(cache, lr, weight_decay):
    reference = train(tiny(), **FAST, lr=float(lr), weight_decay=float(weight_decay))
    result = train(tiny(), **FAST, lr=lr, weight_decay=weight_decay)
    assert result.from_cache and result.cache_path == reference.cache_path  # the same key: plain floats
    key = json.loads(result.cache_path.with_suffix(".json").read_text())["key"]
    assert type(key["lr"]) is float and type(key["weight_decay"]) is float


@pytest.mark.parametrize("device, match", [
    ("gpu", "device must be a torch.device or a string such as 'cpu', 'cuda', 'cuda:0' or 'meta', got 'gpu'"),
    (3.5, r"device must be .* got 3\.5 \(a float\)"),
    ("cuda:99", "device 'cuda:99' is not available"),
])
def test_bad_device_is_a_value_error(device, match):
    with pytest.raises(ValueError, match=match):
        train(tiny(), **FAST, device=device, cache=False)


# --------------------------------------------------------------------------- a loss that blows up
class BlowsUp(nn.Module):
    """Predicts fine for ``good`` calls, then returns ``bad`` (nan or inf) logits."""

    def __init__(self, good=2, bad=float("nan")):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 1)
        self.calls, self.good, self.bad = 0, good, bad
        self.segviz_name = "blows-up"

    def forward(self, x):
        self.calls += 1
        out = self.conv(x)
        return out if self.calls <= self.good else out * self.bad


@pytest.mark.parametrize("bad, shown", [(float("nan"), "nan"), (float("inf"), "nan"), (-float("inf"), "nan")])
def test_non_finite_loss_stops_with_a_clear_error_and_caches_nothing(cache, bad, shown):
    model = BlowsUp(good=2, bad=bad)
    with pytest.raises(ValueError) as err:
        train(model, **{**FAST, "steps": 5}, lr=0.5)
    message = str(err.value)
    assert message.startswith(f"the training loss became {shown} at step 3 of 5 (lr=0.5, weight_decay=0.01)")
    assert "nothing was cached" in message and "try a lower lr, e.g. lr=0.05" in message
    assert model.calls == 3 and not model.training
    assert not cache.exists() or not any(cache.iterdir())


def test_divergence_from_a_huge_learning_rate_is_caught(cache):
    with pytest.raises(ValueError, match=r"the training loss became nan at step \d+ of 10 \(lr=1e\+30"):
        train(tiny(), **{**FAST, "steps": 10}, lr=1e30)
    with pytest.raises(ValueError, match=r"lr=1e\+38 is too large: the optimizer step overflowed at step 1 of 10"):
        train(tiny(), **{**FAST, "steps": 10}, lr=1e38)
    assert not cache.exists() or not any(cache.iterdir())


def test_own_loss_that_is_infinite_is_caught(cache):
    class InfLoss(TinyNet):
        def loss(self, outputs, target):
            return outputs.sum() * float("inf")

    with pytest.raises(ValueError, match=r"the training loss became (inf|-inf|nan) at step 1 of 3"):
        train(InfLoss(4), **FAST)
    assert not cache.exists() or not any(cache.iterdir())


# --------------------------------------------------------------------------- cache writes that fail
def _raiser(error):
    def raise_it(*args, **kwargs):
        raise error

    return raise_it


@pytest.mark.parametrize("error", [
    RuntimeError("serializer exploded"),
    MemoryError("out of memory while writing"),
    OSError(28, "No space left on device"),
    PermissionError(13, "Permission denied"),
    ValueError("a value the serializer refused"),
], ids=lambda e: type(e).__name__)
def test_any_error_while_writing_the_cache_warns_and_returns_the_trained_run(cache, monkeypatch, error):
    import safetensors.torch

    reference = train(tiny(), **FAST, cache=False)
    monkeypatch.setattr(safetensors.torch, "save_file", _raiser(error))
    with pytest.warns(UserWarning) as caught:
        result = train(tiny(), **FAST)
    message = str(caught[0].message)
    assert message.startswith("could not write the segviz cache entry ")
    assert f"({type(error).__name__}: {error}); the trained model is returned but not cached" in message
    assert result.cache_path is None and not result.from_cache
    assert result.losses == reference.losses and result.val_miou == reference.val_miou
    assert_same_weights(weights(result.model), weights(reference.model))
    assert not list(cache.glob("*")) if cache.exists() else True  # no half-written entry, no temporary file


def test_metadata_write_failure_removes_the_weights_so_the_next_run_is_clean(cache, monkeypatch):
    import pathlib

    with monkeypatch.context() as patch:
        patch.setattr(pathlib.Path, "write_text", _raiser(RuntimeError("json writer broke")))
        with pytest.warns(UserWarning, match=r"could not write .*RuntimeError: json writer broke"):
            first = train(tiny(), **FAST)
    assert first.cache_path is None and len(first.losses) == 3
    assert cache.exists() and not list(cache.glob("*"))  # the weights written before the failure are gone too
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "broken entry" warning: nothing half-written was left
        second = train(tiny(), **FAST)
        third = train(tiny(), **FAST)
    assert not second.from_cache and third.from_cache and third.cache_path.parent == cache


def test_read_only_cache_folder_simulated(cache, monkeypatch):
    monkeypatch.setattr(os, "replace", _raiser(PermissionError(13, "Permission denied")))
    with pytest.warns(UserWarning, match=r"could not write .*PermissionError: \[Errno 13\] Permission denied"):
        result = train(tiny(), **FAST)
    assert result.cache_path is None and len(result.losses) == 3 and result.val_miou is not None
    assert not list(cache.glob("*"))


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write into a read-only folder")
def test_read_only_cache_folder(cache):
    cache.mkdir(parents=True)
    cache.chmod(0o500)
    try:
        with pytest.warns(UserWarning, match="could not write"):
            result = train(tiny(), **FAST)
    finally:
        cache.chmod(0o700)
    assert result.cache_path is None and len(result.losses) == 3


# --------------------------------------------------------------------------- the model's own loss
class OwnLoss(nn.Module):
    """forward returns a dict (as set-prediction heads do); ``loss`` and ``predict`` read it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = TinyNet(4)
        self.loss_calls = []
        self.segviz_name = "own-loss"

    def forward(self, x):
        return {"coarse": self.net(x), "size": x.shape[-2:]}

    def loss(self, outputs, target):
        self.loss_calls.append(tuple(target.shape))
        logits = nn.functional.interpolate(outputs["coarse"], size=tuple(target.shape[-2:]), mode="nearest")
        return nn.functional.cross_entropy(logits, target, label_smoothing=0.1)

    def predict(self, x):
        out = self(x)
        return nn.functional.interpolate(out["coarse"], size=tuple(out["size"]), mode="nearest")


def test_the_models_own_loss_is_used_and_predict_validates(cache):
    model = OwnLoss()
    before = weights(model)
    result = train(model, **FAST)
    assert model.loss_calls == [(4, 16, 16)] * 3  # once per step, on the labels
    assert 0 <= result.val_miou <= 1  # evaluated through predict: forward's dict is no logits
    assert not torch.equal(weights(model)["net.0.0.weight"], before["net.0.0.weight"])
    plain = OwnLoss()
    plain.loss = None  # not callable: the trainer falls back to cross-entropy, which needs logits
    with pytest.raises(ValueError, match=r"train expects model\(x\) to return .* got dict"):
        train(plain, **FAST, cache=False)


@pytest.mark.parametrize("returned, got", [
    (lambda out: out["coarse"].mean(dim=(2, 3)), "a tensor of shape (4, 5)"),
    (lambda out: 1.0, "float"),
    (lambda out: torch.tensor(1.0), "a tensor of shape () without grad"),
])
def test_own_loss_must_return_a_scalar_tensor_with_grad(returned, got):
    model = OwnLoss()
    model.loss = lambda outputs, target: returned(outputs)
    with pytest.raises(ValueError) as err:
        train(model, **FAST, cache=False)
    assert str(err.value) == f"model.loss(outputs, target) must return a scalar tensor with grad, got {got}"


# --------------------------------------------------------------------------- the learning-rate schedule
def test_lr_factor_by_hand():
    from segviz.training import lr_factor

    assert [lr_factor(t, 5, 0, "constant") for t in range(5)] == [1.0] * 5
    assert [lr_factor(t, 5, 2, "constant") for t in range(5)] == [0.5, 1.0, 1.0, 1.0, 1.0]
    # poly, power 1, 1 warmup step: p = (t - 1) / 4 for t >= 1
    assert [lr_factor(t, 5, 1, "poly") for t in range(5)] == [1.0, 1.0, 0.75, 0.5, 0.25]
    assert [lr_factor(t, 3, 0, "poly", power=2.0) for t in range(3)] == pytest.approx([1.0, 4 / 9, 1 / 9])
    # cosine over 4 steps: p = 0, 1/4, 1/2, 3/4
    expected = [1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5, (1 + math.cos(3 * math.pi / 4)) / 2]
    assert [lr_factor(t, 4, 0, "cosine") for t in range(4)] == pytest.approx(expected)
    # warmup climbs linearly to 1 at its last step, then the decay starts from 1
    assert [lr_factor(t, 10, 4, "cosine") for t in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_train_uses_the_schedule_and_keys_the_cache_by_it(cache, monkeypatch):
    rates = []
    step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        rates.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    constant = train(tiny(), **{**FAST, "steps": 4})
    assert rates == [1e-3] * 4
    rates.clear()
    poly = train(tiny(), **{**FAST, "steps": 4}, schedule="poly", warmup=2)
    assert rates == pytest.approx([0.5e-3, 1e-3, 1e-3, 0.5e-3])
    assert poly.cache_path != constant.cache_path
    key = json.loads(constant.cache_path.with_suffix(".json").read_text())["key"]
    assert "schedule" not in key and "warmup" not in key  # keys written before schedules existed still match
    key = json.loads(poly.cache_path.with_suffix(".json").read_text())["key"]
    assert (key["schedule"], key["warmup"], key["power"]) == ("poly", 2, 1.0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(schedule="linear"), "schedule must be one of constant, poly, cosine"),
    (dict(warmup=3), r"warmup must be an int with 0 <= warmup < steps=3"),
    (dict(warmup=-1), "warmup must be"),
    (dict(warmup=1.5), "warmup must be"),
    (dict(schedule="poly", power=0), "power must be a finite number > 0"),
])
def test_bad_schedules_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train(tiny(), **FAST, **kwargs, cache=False)


def test_scenes_get_a_held_out_validation_set_by_default():
    from segviz.data import Scenes

    torch.manual_seed(0)
    result = train(TinyNet(4, num_classes=6), Scenes(8, size=32, seed=3), steps=1, batch_size=2, cache=False,
                   progress=False)
    assert result.val_miou is not None and 0 <= result.val_miou <= 1


# --------------------------------------------------------------------------- BatchNorm over processes
def test_all_reduce_batchnorm_is_plain_batchnorm_in_one_process():
    from segviz.training import AllReduceBatchNorm, sync_batchnorm

    torch.manual_seed(0)
    model = TinyNet(8)
    reference = TinyNet(8)
    reference.load_state_dict(model.state_dict())
    keys = list(model.state_dict())
    converted = sync_batchnorm(model, "cpu")
    assert converted is model and list(model.state_dict()) == keys
    assert sum(isinstance(m, AllReduceBatchNorm) for m in model.modules()) == 4
    assert not any(type(m) is nn.BatchNorm2d for m in model.modules())
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(model(x), reference(x))  # training mode, no process group: plain BN
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value)


def test_panoptic_quality_counts_matches_above_half_iou_per_class():
    from segviz.training import panoptic_quality

    def box(r0, r1, c0, c1, size=10):
        m = torch.zeros(size, size, dtype=torch.bool)
        m[r0:r1, c0:c1] = True
        return m

    truth = (torch.tensor([1, 1, 2]), torch.stack([box(0, 4, 0, 4), box(6, 10, 6, 10), box(0, 2, 6, 10)]))
    perfect = panoptic_quality([truth], [truth], num_classes=3)
    assert perfect["pq"] == perfect["sq"] == perfect["rq"] == 1.0 and set(perfect["per_class"]) == {1, 2}
    # class 1: one object found with IoU 12/16 (a 4x3 box inside the 4x4 one), the other missed and a
    # false one elsewhere; class 2: the right place but the wrong class (so an FN of 2 and an FP of 0)
    pred = (torch.tensor([1, 1, 0]), torch.stack([box(0, 4, 0, 3), box(5, 6, 0, 10), box(0, 2, 6, 10)]))
    result = panoptic_quality([pred], [truth], num_classes=3)
    c1 = result["per_class"][1]
    assert (c1["tp"], c1["fp"], c1["fn"]) == (1, 1, 1)
    assert c1["sq"] == pytest.approx(12 / 16) and c1["rq"] == pytest.approx(1 / 2)
    assert c1["pq"] == pytest.approx(12 / 16 / 2)
    assert result["per_class"][2] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "tp": 0, "fp": 0, "fn": 1}
    assert result["per_class"][0]["fp"] == 1
    assert result["pq"] == pytest.approx((12 / 16 / 2 + 0 + 0) / 3)
    # IoU exactly 0.5 is not a match (the rule is IoU > 0.5)
    half = (torch.tensor([1]), box(0, 4, 0, 2)[None])
    assert panoptic_quality([half], [(torch.tensor([1]), box(0, 4, 0, 4)[None])], 3)["per_class"][1]["tp"] == 0
    with pytest.raises(ValueError, match="2 predictions for 1 targets"):
        panoptic_quality([pred, pred], [truth], 3)
    with pytest.raises(ValueError, match="outside"):
        panoptic_quality([(torch.tensor([5]), box(0, 1, 0, 1)[None])], [truth], 3)


def test_evaluate_panoptic_refuses_models_and_labels_it_cannot_score():
    from segviz.data import Scenes
    from segviz.training import evaluate_panoptic

    with pytest.raises(ValueError, match="no panoptic"):
        evaluate_panoptic(segviz.create_model("segformer-nano"), Scenes(2, 64, target="panoptic"))
    with pytest.raises(ValueError, match="target='panoptic'"):
        evaluate_panoptic(segviz.create_model("mask2former-nano"), Scenes(2, 64))

    from segviz.models.mask2former import panoptic_targets

    class Oracle(torch.nn.Module):  # answers with the true objects, in order: PQ must be 1
        num_classes = 6

        def __init__(self, data):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.answers = [panoptic_targets(data[i][1][None])[0] for i in range(len(data))]

        def panoptic(self, images, stuff_classes=(), object_threshold=0.8, overlap_threshold=0.8):
            out, self.answers = self.answers[:len(images)], self.answers[len(images):]
            return out

    data = Scenes(5, 64, target="panoptic")
    result = evaluate_panoptic(Oracle(data), data, batch_size=2)
    assert result["pq"] == 1.0 and result["per_class"][0]["tp"] == 5  # one background segment per scene
