"""python -m segviz train NAME: the run folder (weights, model card, resumable checkpoint), exact
resumption, refusals, and what happens to a run when its files or its loss go wrong.

Everything trains segformer-nano (or edaformer-nano) at 64 px for a few steps, in this process
and on one thread, so each test takes a second or two.
"""
import datetime
import hashlib
import json

import pytest
import torch

import segviz
import segviz.training as training
from segviz.__main__ import main
from segviz.data import Scenes
from segviz.training import World, evaluate, train_run
from segviz.weights import load_state_dict_strict, read_state_dict
from tests.toys import threads

TINY = ["--batch-size", "2", "--size", "64", "--val-size", "4", "--no-progress"]


@pytest.fixture(autouse=True)
def one_thread():
    # the shared CPU runs these tiny models fastest on one thread (and the results do not depend on it)
    with threads(1):
        yield


def run(out, *args, name="segformer-nano", steps=4):
    """main(["train", ...]) with the tiny settings; returns the exit status (argparse's too)."""
    try:
        return main(["train", name, "--steps", str(steps), *TINY, "--out", str(out), *map(str, args)])
    except SystemExit as exit_:
        return exit_.code


def card_of(out, name="segformer-nano"):
    return json.loads((out / f"{name}.json").read_text())


def tensors(path):
    return {k: v.clone() for k, v in read_state_dict(path).items()}


def max_difference(a, b):
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


# --------------------------------------------------------------------------- the run folder
def test_a_run_writes_weights_model_card_and_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--warmup", "1", "--schedule", "cosine", "--seed", "3", "--val-every", "2", "--checkpoint-every", "2"]
    assert main(["train", "segformer-nano", "--steps", "4", "--batch-size", "2", "--size", "64",
                 "--val-size", "4", "--out", str(out), *args]) == 0
    captured = capsys.readouterr()
    assert "loss=" in captured.err and "val_mIoU=" in captured.err and "4/4" in captured.err  # the bar
    assert "wrote " in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "segformer-nano.json",
                                                     "segformer-nano.safetensors"]  # no temporary files left

    card = card_of(out)
    torch.manual_seed(0)
    fresh = segviz.create_model("segformer-nano", num_classes=6)
    assert card["model"] == "segformer-nano"
    assert card["config"]["num_classes"] == 6 and card["config"]["sr_ratios"] == [8, 4, 2, 1]
    assert card["params"] == sum(p.numel() for p in fresh.parameters())
    assert card["dataset"]["train"] == Scenes(100_000, 64, 3, "train").description()
    assert card["dataset"]["val"] == Scenes(4, 64, 0, "val").description()  # held out, seed 0 for every run
    assert len(card["dataset"]["classes"]) == 6
    assert (card["steps"], card["batch_size"], card["image_size"], card["seed"]) == (4, 2, 64, 3)
    assert (card["lr"], card["weight_decay"], card["schedule"], card["warmup"], card["power"]) == (1e-3, 0.01, "cosine", 1, 1.0)
    assert (card["device"], card["amp"], card["world_size"], card["per_rank_batch_size"]) == ("cpu", "none", 1, 2)
    assert card["wall_time_s"] > 0 and card["torch"] == torch.__version__ and card["segviz"] == segviz.__version__
    assert [step for step, _ in card["val_history"]] == [2, 4]
    assert card["val_miou"] == card["val_history"][-1][1] and 0 <= card["val_miou"] <= 1
    assert len(card["losses"]) == 4 and card["final_loss"] == card["losses"][-1]
    assert card["command"].startswith("python -m segviz train segformer-nano --steps 4")
    assert datetime.datetime.fromisoformat(card["date"]).utcoffset() == datetime.timedelta(0)

    # the weights load strictly into a fresh model and give the card's validation mIoU again
    model = segviz.create_model("segformer-nano", num_classes=6)
    load_state_dict_strict(model, read_state_dict(out / "segformer-nano.safetensors"))
    assert evaluate(model, Scenes(4, 64, 0, "val"), batch_size=2) == card["val_miou"]

    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "scaler", "step", "losses", "val_history", "rng", "recipe"} <= set(checkpoint)
    assert checkpoint["step"] == 4 and checkpoint["finished"] and checkpoint["losses"] == card["losses"]
    assert max_difference(checkpoint["model"], tensors(out / "segformer-nano.safetensors")) == 0
    # the schedule: warmup step 0 at lr, then cosine over 3 steps; the scheduler has moved 4 times
    assert checkpoint["scheduler"]["last_epoch"] == 4


def test_the_default_folder_is_runs_name_seed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "segformer-nano", "--steps", "1", *TINY, "--seed", "2"]) == 0
    assert (tmp_path / "runs" / "segformer-nano-seed2" / "segformer-nano.safetensors").exists()


# --------------------------------------------------------------------------- resuming
class Crash(Exception):
    """Stands for a killed job."""


def crash_at_step(monkeypatch, step):
    """Make the loss of the given step raise Crash, as if the process were killed there."""
    real, calls = training._loss, []

    def loss(*args, **kwargs):
        calls.append(1)
        if len(calls) == step:
            raise Crash(f"killed at step {step}")
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "_loss", loss)


def test_resume_after_a_crash_equals_training_in_one_go(tmp_path, monkeypatch):
    # drop-path stays on (0.1): the random masks must continue where they stopped too
    args = ["--warmup", "2", "--checkpoint-every", "5", "--val-every", "3"]
    assert run(tmp_path / "one-go", *args, steps=10) == 0
    with monkeypatch.context() as patch:
        crash_at_step(patch, 8)
        with pytest.raises(Crash):
            run(tmp_path / "resumed", *args, steps=10)
    checkpoint = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 5 and not checkpoint["finished"]  # the job died after the step-5 checkpoint
    assert not (tmp_path / "resumed" / "segformer-nano.safetensors").exists()
    assert run(tmp_path / "resumed", *args, "--resume", steps=10) == 0

    one_go, resumed = card_of(tmp_path / "one-go"), card_of(tmp_path / "resumed")
    difference = max_difference(tensors(tmp_path / "one-go" / "segformer-nano.safetensors"),
                                tensors(tmp_path / "resumed" / "segformer-nano.safetensors"))
    assert difference <= 1e-6
    assert resumed["losses"] == one_go["losses"] and resumed["val_history"] == one_go["val_history"]
    assert [s["start"] for s in resumed["segments"]] == [0, 5]
    assert resumed["segments"][1]["command"].endswith("--resume")


def test_resume_needs_the_same_settings(tmp_path, capsys):
    assert run(tmp_path, steps=2) == 0
    assert run(tmp_path, "--resume", "--lr", "0.002", steps=3) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "other settings" in err
    assert "steps: 2 in the checkpoint, 3 now" in err and "lr: 0.001 in the checkpoint, 0.002 now" in err


def test_resume_without_a_checkpoint_starts_a_new_run(tmp_path, capsys):
    assert run(tmp_path / "new", "--resume", steps=1) == 0
    assert "no " in capsys.readouterr().err and (tmp_path / "new" / "segformer-nano.json").exists()


# --------------------------------------------------------------------------- a run is never overwritten or lost
def test_a_finished_run_is_not_overwritten(tmp_path, capsys):
    assert run(tmp_path, steps=1) == 0
    weights = (tmp_path / "segformer-nano.safetensors").read_bytes()
    capsys.readouterr()
    assert run(tmp_path, steps=1) == 2
    err = capsys.readouterr().err
    assert f"error: {tmp_path} already holds a run" in err and "--resume" in err and "--force" in err
    assert (tmp_path / "segformer-nano.safetensors").read_bytes() == weights

    assert run(tmp_path, "--force", "--lr", "0.01", steps=1) == 0  # starts over with other settings
    assert (tmp_path / "segformer-nano.safetensors").read_bytes() != weights
    assert card_of(tmp_path)["lr"] == 0.01

    (tmp_path / "checkpoint.pt").unlink()
    assert run(tmp_path, "--resume", "--lr", "0.01", steps=1) == 2  # finished, nothing to resume from
    assert "no checkpoint.pt" in capsys.readouterr().err


def test_when_the_final_files_cannot_be_written_the_checkpoint_keeps_the_run(tmp_path, monkeypatch, capsys):
    import safetensors.torch

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(safetensors.torch, "save_file", full_disk)
        assert run(tmp_path, steps=3) == 1
    err = capsys.readouterr().err
    assert "warning: could not write segformer-nano.safetensors / segformer-nano.json" in err
    assert "No space left on device" in err
    assert f"the finished run is kept in {tmp_path / 'checkpoint.pt'}" in err and "--resume" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # nothing half-written
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert checkpoint["finished"] and checkpoint["step"] == 3

    crash_at_step(monkeypatch, 1)  # --resume writes the files without training again
    assert run(tmp_path, "--resume", steps=3) == 0
    assert "holds a finished run" in capsys.readouterr().err
    assert max_difference(checkpoint["model"], tensors(tmp_path / "segformer-nano.safetensors")) == 0
    card = card_of(tmp_path)
    assert card["losses"] == checkpoint["losses"] and len(card["segments"]) == 1


def test_a_checkpoint_that_cannot_be_written_does_not_stop_the_run(tmp_path, monkeypatch, capsys):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    assert run(tmp_path, "--checkpoint-every", "1", steps=2) == 0
    err = capsys.readouterr().err
    assert "warning: could not write the checkpoint" in err and "at step 1" in err and "training goes on" in err
    assert "at step 2" in err and "the final files are written next" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["segformer-nano.json", "segformer-nano.safetensors"]


def test_a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    real = training._loss
    calls = []

    def loss(*args, **kwargs):
        calls.append(1)
        value = real(*args, **kwargs)
        return value * float("nan") if len(calls) == 4 else value

    monkeypatch.setattr(training, "_loss", loss)
    assert run(tmp_path, "--checkpoint-every", "2", "--lr", "0.5", steps=6) == 2
    err = capsys.readouterr().err
    assert "error: the training loss became nan at step 4 of 6 (lr=0.5, weight_decay=0.01)" in err
    assert f"the last good checkpoint (step 2) is kept in {tmp_path / 'checkpoint.pt'}" in err
    assert "try a lower lr, e.g. lr=0.05" in err
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 2
    assert not (tmp_path / "segformer-nano.safetensors").exists()


# --------------------------------------------------------------------------- settings
@pytest.mark.parametrize("name, key", [("segformer-nano", "sr_ratios"), ("edaformer-nano", "pool_ratios")])
def test_training_at_other_reduction_ratios_through_set(tmp_path, name, key):
    assert run(tmp_path, "--set", f"{key}=(16, 8, 4, 2)", "--set", "drop_path_rate=0.0", name=name, steps=1) == 0
    card = card_of(tmp_path, name)
    assert card["config"][key] == [16, 8, 4, 2] and card["config"]["drop_path_rate"] == 0.0
    model = segviz.create_model(name, num_classes=6, **{key: (16, 8, 4, 2)})
    load_state_dict_strict(model, read_state_dict(tmp_path / f"{name}.safetensors"))


def test_bf16_autocast_on_the_cpu(tmp_path):
    assert run(tmp_path, "--amp", "bf16", steps=1) == 0
    assert card_of(tmp_path)["amp"] == "bf16"


@pytest.mark.parametrize("args, message", [
    (["no-such-model"], "error: unknown model 'no-such-model'"),
    (["swin-nano"], "error: swin-nano is not a segmentation model"),
    (["segformer-nano", "--steps", "0"], "argument --steps: must be a positive integer, got '0'"),
    (["segformer-nano", "--batch-size", "-2"], "argument --batch-size: must be a positive integer"),
    (["segformer-nano", "--lr", "nan"], "argument --lr: must be a finite number > 0, got 'nan'"),
    (["segformer-nano", "--lr", "inf"], "argument --lr: must be a finite number > 0, got 'inf'"),
    (["segformer-nano", "--lr", "0"], "argument --lr: must be a finite number > 0, got '0'"),
    (["segformer-nano", "--weight-decay=-inf"], "argument --weight-decay: must be a finite number >= 0"),
    (["segformer-nano", "--schedule", "linear"], "argument --schedule: invalid choice: 'linear'"),
    (["segformer-nano", "--warmup", "3", "--steps", "3"], "warmup must be an int with 0 <= warmup < steps=3"),
    (["segformer-nano", "--set", "drop_path_rate"], "argument --set: must look like key=value"),
    (["segformer-nano", "--set", "sr_ratios=(16, 8"], "argument --set: the value of sr_ratios must be a Python literal"),
    (["segformer-nano", "--set", "pool=max"], "(quote strings)"),
    (["segformer-nano", "--set", "bogus=1"], "error: segformer-nano: unknown override(s) ['bogus']"),
    (["segformer-nano", "--set", "drop_path_rate=0.0", "--set", "drop_path_rate=0.1"], "drop_path_rate is given twice"),
    (["segformer-nano", "--num-classes", "3"], "num_classes must be an int >= 6"),
    (["segformer-nano", "--amp", "fp16"], "argument --amp: fp16 needs a CUDA device, got cpu"),
    (["segformer-nano", "--amp", "fp8"], "argument --amp: invalid choice"),
    (["segformer-nano", "--device", "gpu"], "error: device must be a torch.device or a string"),
    (["segformer-nano", "--resume", "--force"], "give one, not both"),
])
def test_bad_settings_exit_with_2_and_say_why(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    steps = [] if "--steps" in args else ["--steps", "1"]
    try:
        status = main(["train", *args, *steps, "--size", "64", "--out", str(out)])
    except SystemExit as exit_:
        status = exit_.code
    assert status == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # refused before anything was written


def test_not_a_segmentation_model_names_the_ones_that_are(capsys):
    assert main(["train", "swin-t"]) == 2
    err = capsys.readouterr().err
    trainable = err.split("models that can be trained: ")[1].strip().split(", ")
    assert "segformer-nano" in trainable and "upernet-swin-nano" in trainable and "edaformer-nano" in trainable
    assert not any(name.startswith("swin") for name in trainable)


def test_the_global_batch_must_divide_among_the_processes(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(SystemExit) as exit_:
        main(["train", "segformer-nano", "--batch-size", "3", "--out", str(tmp_path / "run")])
    assert exit_.value.code == 2
    assert "argument --batch-size: 3 is not divisible by the 2 processes" in capsys.readouterr().err
    with pytest.raises(ValueError, match="batch_size 3 .* must be divisible by the number of processes, 2"):
        train_run("segformer-nano", tmp_path / "run", batch_size=3, world=World(0, 0, 2))


@pytest.mark.parametrize("env, match", [
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE='0' must be >= 1"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2 must be below WORLD_SIZE=2"),
])
def test_bad_torchrun_environment(env, match):
    with pytest.raises(ValueError, match=match):
        World.from_env(env)
    assert World.from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == World(3, 1, 4)
    assert World.from_env({}) == World(0, 0, 1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=0), "steps must be an int >= 1"),
    (dict(lr=float("nan")), "lr must be a finite number > 0"),
    (dict(schedule="step"), "schedule must be one of constant, poly, cosine"),
    (dict(val_size=-1), "val_size must be an int >= 0"),
    (dict(amp="fp16"), "amp='fp16' needs a CUDA device"),
    (dict(device="meta"), "device 'meta' holds no data"),
    (dict(num_classes=7, overrides={"num_classes": 8}), "num_classes is given twice"),
])
def test_train_run_refuses_bad_settings(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_run("segformer-nano", tmp_path / "run", **kwargs)
    assert not (tmp_path / "run").exists()


def test_train_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for option in ("--steps", "--resume", "--force", "--amp", "--set KEY=VALUE", "--val-every", "--checkpoint-every"):
        assert option in out


# --------------------------------------------------------------------------- --init
def test_init_starts_from_a_finished_run_and_the_card_records_it(tmp_path):
    assert run(tmp_path / "small", steps=2) == 0  # the first stage (the tiny settings: 64 px)
    start = tmp_path / "small" / "segformer-nano.safetensors"
    # one step at a negligible lr leaves the file's parameters (BatchNorm statistics move on the batch)
    assert run(tmp_path / "zero", "--init", start, "--lr", "1e-12", "--warmup", "0", steps=1) == 0

    def parameters(path):
        return {k: v for k, v in tensors(path).items() if not k.endswith(("running_mean", "running_var", "tracked"))}

    assert max_difference(parameters(start), parameters(tmp_path / "zero" / "segformer-nano.safetensors")) < 1e-6
    # (without --init the same seed would start from the random init: 2 steps at lr 1e-3 away from it)
    assert run(tmp_path / "random", "--lr", "1e-12", "--warmup", "0", steps=1) == 0
    assert max_difference(parameters(start), parameters(tmp_path / "random" / "segformer-nano.safetensors")) > 1e-4
    # the second stage at another size
    assert run(tmp_path / "big", "--init", start, "--size", "96", steps=2) == 0
    card = card_of(tmp_path / "big")
    assert card["image_size"] == 96
    assert card["init"]["path"] == str(start)
    assert card["init"]["sha256"] == hashlib.sha256(start.read_bytes()).hexdigest()
    assert card["init"]["card"]["image_size"] == 64 and card["init"]["card"]["steps"] == 2
    assert card_of(tmp_path / "small")["init"] is None  # a random start says so
    # a run started from other weights is a different run: resume refuses it
    assert run(tmp_path / "big", "--resume", "--init", tmp_path / "zero" / "segformer-nano.safetensors",
               "--size", "96", steps=2) == 2


def test_init_refuses_a_missing_file_and_weights_of_another_model(tmp_path, capsys):
    assert run(tmp_path / "a", "--init", tmp_path / "nope.safetensors", steps=1) == 2
    assert "is not a file" in capsys.readouterr().err
    assert run(tmp_path / "eda", name="edaformer-nano", steps=1) == 0
    assert run(tmp_path / "b", "--init", tmp_path / "eda" / "edaformer-nano.safetensors", steps=1) == 2
    assert "does not fit segformer-nano" in capsys.readouterr().err


def test_mask2former_trains_on_objects_and_its_card_keeps_every_predictions_loss_terms(tmp_path, monkeypatch):
    name = "mask2former-nano"
    args = ["--checkpoint-every", "2", "--warmup", "1"]
    assert run(tmp_path / "one-go", *args, name=name, steps=4) == 0
    card = card_of(tmp_path / "one-go", name)
    assert card["dataset"]["train"]["target"] == "panoptic"  # what Mask2Former.train_target asks for
    assert "target" not in card["dataset"]["val"]  # validation is mIoU on class maps
    terms = card["loss_terms"]
    layers = len(segviz.create_model(name).decoder.layers)
    assert terms["steps"] == [1, 2, 3, 4]  # steps // 100 == 0: one entry per step
    assert sorted(terms) == sorted(["steps"] + [f"p{i}/{t}" for i in range(layers + 1)
                                                for t in ("class", "mask", "dice")])
    weight = {"class": 2.0, "mask": 5.0, "dice": 5.0}
    for step, loss in enumerate(card["losses"]):  # the logged loss is the weighted sum of the terms
        assert sum(weight[k.split("/")[1]] * v[step] for k, v in terms.items() if k != "steps") == \
            pytest.approx(loss, rel=1e-5)
    # the terms survive a crash and --resume like the losses do
    with monkeypatch.context() as patch:
        crash_at_step(patch, 3)
        with pytest.raises(Crash):
            run(tmp_path / "resumed", *args, name=name, steps=4)
    assert run(tmp_path / "resumed", *args, "--resume", name=name, steps=4) == 0
    resumed = card_of(tmp_path / "resumed", name)
    assert resumed["losses"] == card["losses"]
    assert resumed["loss_terms"] == terms
    # a model without its own terms writes no loss_terms
    assert run(tmp_path / "plain", steps=2) == 0 and "loss_terms" not in card_of(tmp_path / "plain")
