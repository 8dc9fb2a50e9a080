"""How long every explorer takes to answer a control, headless, at its notebook's setting.

    python benchmarks/widget_latency.py [--runs 10] [--threads 1] [--only swin sampling ...] [--markdown]

Each explorer is built as its notebook builds it (the zoo's shipped weights, the notebook's
input size and query), then controls are set from Python (``control.value = ...``, which runs
the widget's observer, i.e. the redraw, synchronously, PNG included) and the time until the
assignment returns is taken. Two kinds of change, median of ``--runs`` each:

* query pixel: the query's y moves to a new row (a redraw from what is already computed);
  target <= 150 ms;
* new forward pass: a control whose setting needs the model to run again, with that setting
  removed from the explorer's cache before every run, so every run pays the forward pass
  (attention explorer: none, it draws from a recording made before it; the stage is timed
  instead); target <= 300 ms.

==================== ======================== =================================== =====================
explorer             notebook, model, input   new-forward control                  query control
==================== ======================== =================================== =====================
AttentionExplorer    01, segformer-nano, 256  (none: ``stage``, a redraw)          ``y``
ISRExplorer          02, edaformer-nano, 256  ``sliders["enc 1"]`` (+ 8-image mIoU) ``y``
SwinExplorer         03, upernet-swin-nano,   ``window`` 7 <-> 6                    ``y``
                     224
SamplingExplorer     04, mask2former-nano,    ``state`` "init" (records at init)    ``y``
                     256
DeepLabExplorer      05, deeplabv3plus-nano,  ``rate``                              ``y``
                     256
QueryLooksExplorer   06, four models + DCN,   (none: ``state``, a redraw)          ``y``
                     256
==================== ======================== =================================== =====================

Times are wall clock on a machine that may be shared (the load average is printed); the main
thread's CPU time is given alongside (the ISR explorer runs its mIoU pass on a second thread).
torch runs with ``--threads`` threads (default 1, as the ISR explorer sets itself).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402

import segviz  # noqa: E402
from segviz.data import SCENE_CLASSES, Scenes, sample_image  # noqa: E402

QUERY_MS, FORWARD_MS = 150, 300


def timed(action) -> tuple[float, float]:
    """(wall ms, main-thread CPU ms) of ``action()``."""
    cpu, start = time.thread_time(), time.perf_counter()
    action()
    return (time.perf_counter() - start) * 1e3, (time.thread_time() - cpu) * 1e3


def _rows(h: int, runs: int, now: int) -> list[int]:
    rows = [8 + i * (h - 16) // runs for i in range(runs + 1)]
    return [r for r in rows if r != now][:runs]


def _drop_other_settings(cache: dict, keep) -> None:
    for key in list(cache):
        if key != keep:
            del cache[key]


# --------------------------------------------------------------------------- one builder per explorer
def attention_explorer():
    from segviz.viz import AttentionExplorer

    photo = sample_image("astronaut", size=256)
    model = segviz.create_model("segformer-nano", weights="scenes").eval()
    with torch.no_grad(), segviz.capture(model) as rec:
        model(photo.tensor)
    attention = {f"stage {i + 1}": rec.attention[f"encoder.stages.{i}.blocks.0.attn"] for i in range(4)}
    ex = AttentionExplorer(photo.array, attention, query=(80, 118))
    stages = list(attention)

    def other(i):  # a redraw only: the explorer never runs the model
        ex.stage.value = stages[(stages.index(ex.stage.value) + 1) % len(stages)]

    return ex, ex.y, other, "stage (redraw only)"


def isr_explorer():
    from segviz.viz.isr_explorer import ISRExplorer, _key

    model = segviz.create_model("edaformer-nano", weights="scenes")
    shipped = segviz.zoo.find("edaformer-nano", "scenes")
    held_out = Scenes(**{k: v for k, v in shipped.card["shipped"]["eval"].items() if k != "class"})
    i = 0
    image, _ = held_out[i]
    quick_set = Scenes(8, size=held_out.size, seed=0, split="val")
    ex = ISRExplorer(model, held_out.array(i), image[None], eval_set=quick_set, class_names=SCENE_CLASSES)
    slider = ex.sliders["enc 1"]
    options = [v for v in slider.options if v != slider.value]
    start = slider.value

    def new_setting(k):
        target = options[k % len(options)] if slider.value == start else start
        _drop_other_settings(ex._cache, _key(ex.ratios(), ex.pool.value))
        slider.value = target

    return ex, ex.y, new_setting, f"enc 1 ratio (forward + {len(quick_set)}-image mIoU)"


def swin_explorer():
    from segviz.viz.swin_explorer import SwinExplorer

    photo = sample_image("astronaut", size=224)
    model = segviz.create_model("upernet-swin-nano", weights="scenes").eval()
    ex = SwinExplorer(model, photo.array, photo.tensor, query=(54, 54))
    ex.block.value = "stage 1 · block 2"
    trained = ex.window.value
    other_window = max(w for w in ex.window.options if w[1] != trained)[1]

    def new_window(_k):
        target = other_window if ex.window.value == trained else trained
        _drop_other_settings(ex._cache, (ex.window.value, ex.shift.value))
        ex.window.value = target

    return ex, ex.y, new_window, f"window {trained} <-> {other_window}"


def sampling_explorer():
    from segviz.viz.mask2former_explorer import SamplingExplorer

    model = segviz.create_model("mask2former-nano", weights="scenes").eval()
    size = segviz.zoo.find("mask2former-nano", "scenes").card["image_size"]
    held_out = Scenes(8, size, seed=0, split="val")
    image, _ = held_out[2]
    ex = SamplingExplorer(model, held_out.array(2), image[None], query=(150, 100))
    ex.head.value = 1

    def init_state(_k):
        if ex.state.value != "trained":
            ex.state.value = "trained"  # untimed half: back to the cached trained records
            return "untimed"
        ex._cache.pop("init", None)
        ex.state.value = "init"

    return ex, ex.y, init_state, "state trained -> init (records at init)"


def deeplab_explorer():
    """Notebook 05's explorer: its ``explorer_predict`` / ``explorer_windows`` callbacks, restated."""
    from segviz.viz import deeplab as dviz

    model = segviz.create_model("deeplabv3plus-nano", weights="scenes").eval()
    model8 = segviz.create_model("deeplabv3plus-nano", weights="scenes", output_stride=8).eval()
    held_out = Scenes(32, 256, seed=0, split="val")
    scene = 5
    x = held_out[scene][0][None]
    nets = {16: model, 8: model8}
    layer4_rf = {s: segviz.receptive_field(net, "backbone.layer4", input_size=256) for s, net in nets.items()}
    labels = ["1x1", "atrous 1", "atrous 2", "atrous 3 (rate)", "image pooling"]

    def predict(output_stride, rate, on):
        net = nets[output_stride]
        conv = net.aspp.convs[3].conv
        saved = conv.dilation, conv.padding
        conv.dilation, conv.padding = (rate, rate), (rate, rate)
        off = [net.aspp.convs[i] if i < 4 else net.aspp.pooling for i, b in enumerate(labels) if b not in on]
        handles = [m.register_forward_hook(lambda _m, _i, out: torch.zeros_like(out)) for m in off]
        try:
            with torch.no_grad():
                return net.predict(x)
        finally:
            conv.dilation, conv.padding = saved
            for h in handles:
                h.remove()

    def windows(output_stride, rate, query):
        rf = layer4_rf[output_stride]
        unit = tuple(int(round((q - s) / rf.stride[0])) for q, s in zip(query, rf.start))
        top, left, bottom, right = rf.window(unit)
        out = [(top, left, bottom, right)]
        for r in list(nets[output_stride].aspp.rates[:2]) + [rate]:
            reach = r * output_stride
            out.append((top - reach, left - reach, bottom + reach, right + reach))
        return dict(zip(labels, out + [None]))

    ex = dviz.DeepLabExplorer(held_out.array(scene), predict, windows, labels, rate=18, rates=(1, 36),
                              class_names=SCENE_CLASSES, query=(100, 140))
    ex.rate.value = 4

    def new_rate(k):
        _drop_other_settings(ex._cache, (ex.output_stride.value, ex.rate.value, ex.on()))
        ex.rate.value = 5 + k % 20 if ex.rate.value == 4 else 4

    return ex, ex.y, new_rate, "rate (forward at output stride 16)"


def query_looks_explorer():
    """Notebook 06's explorer (six ways a query looks), with its query-dependent DCN taps rebuilt on
    every move as the notebook does; the DCN probe is left untrained here (its taps are drawn the
    same way, and the notebook's 100 fitting steps are not what is timed)."""
    from segviz.nn.deformable_conv import ModulatedDeformConv2d
    from segviz.viz import deformable_ways as ways

    size = segviz.zoo.find("dat-nano", "scenes").card["image_size"]
    held_out = Scenes(8, size, seed=0, split="val")
    image, _ = held_out[2]
    photo, x = held_out.array(2), image[None]

    def recorded(name, kinds, weights):
        torch.manual_seed(0)
        model = segviz.create_model(name, weights=weights).eval()
        with torch.no_grad(), segviz.capture(model, kinds=kinds) as rec:
            model(x)
        return rec

    def pair(name, kinds):
        return {"init": recorded(name, kinds, None), "trained": recorded(name, kinds, "scenes")}

    segformer, swin = pair("segformer-nano", ["attention"]), pair("upernet-swin-nano", ["window_attention"])
    mask2former, dat = pair("mask2former-nano", ["sampling"]), pair("dat-nano", ["deformed_grid"])
    encoder = segviz.create_model("segformer-nano", weights="scenes").eval().encoder
    with torch.no_grad():
        features = encoder(x)[2]
        torch.manual_seed(0)
        dcn = ModulatedDeformConv2d(features.shape[1], 6).offsets_and_mask(features)
    feature_hw = tuple(features.shape[-2:])

    def comparison(query):
        return {
            "global": {s: segformer[s].attention["encoder.stages.3.blocks.0.attn"] for s in ways.STATES},
            "reduced": {s: segformer[s].attention["encoder.stages.1.blocks.0.attn"] for s in ways.STATES},
            "window": {s: swin[s].attention["backbone.stages.1.blocks.0.attn"] for s in ways.STATES},
            "DCNv2 probe": {s: ways.dcn_taps(*dcn, query, photo.shape[:2], feature_hw) for s in ways.STATES},
            "Deformable-DETR": {s: mask2former[s].sampling["pixel_decoder.encoder.1.self_attn"] for s in ways.STATES},
            "DAT": {s: dat[s].attention["backbone.stages.2.blocks.1.attn"] for s in ways.STATES},
        }

    class MovingQueryExplorer(ways.QueryLooksExplorer):
        def redraw(self):
            self.ways = comparison((self.y.value, self.x.value))
            super().redraw()

    query = (150, 100)
    ex = MovingQueryExplorer(photo, comparison(query), query=query)

    def other_weights(_k):  # a redraw only: every recording is made before the explorer
        ex.state.value = "init" if ex.state.value == "trained" else "trained"

    return ex, ex.y, other_weights, "weights trained <-> init (redraw only)"


BUILDERS = {"attention": attention_explorer, "isr": isr_explorer, "swin": swin_explorer,
            "sampling": sampling_explorer, "deeplab": deeplab_explorer, "query_looks": query_looks_explorer}


def measure(name: str, runs: int) -> dict:
    built = []
    build = timed(lambda: built.append(BUILDERS[name]()))[0]
    ex, y, change, change_label = built[0]
    query = [timed(lambda v=v: setattr(y, "value", v)) for v in _rows(y.max + 1, runs, y.value)]
    forward = []
    k = 0
    while len(forward) < runs:
        out = []
        t = timed(lambda: out.append(change(k)))
        if not out or out[0] != "untimed":
            forward.append(t)
        k += 1
    return dict(name=name, kind=type(ex).__name__, build=build, change=change_label,
                query=statistics.median(t[0] for t in query), query_cpu=statistics.median(t[1] for t in query),
                forward=statistics.median(t[0] for t in forward),
                forward_cpu=statistics.median(t[1] for t in forward), runs=runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", default=None, choices=list(BUILDERS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average {', '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs; "
          f"torch {torch.__version__}, {args.threads} thread(s)")
    rows = []
    for name in args.only or BUILDERS:
        r = measure(name, args.runs)
        rows.append(r)
        print(f"{r['kind']:18s} query {r['query']:5.0f} ms (CPU {r['query_cpu']:4.0f}) | "
              f"{r['change']}: {r['forward']:5.0f} ms (CPU {r['forward_cpu']:4.0f}) | built in {r['build']:.0f} ms",
              flush=True)
    print(f"load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print()
    print("wall: wall-clock ms; CPU: the main thread's CPU ms (what an update costs on a free core)")
    print()
    print("| explorer | query pixel: wall ms (CPU ms) | ≤ 150 ms | new-forward control | wall ms (CPU ms) | ≤ 300 ms |")
    print("|---|---|---|---|---|---|")

    def verdict(r, which, budget):
        return "; ".join(f"{label} {'met' if v <= budget else '**missed**'}"
                         for label, v in (("wall", r[which]), ("CPU", r[which + '_cpu'])))

    for r in rows:
        print(f"| {r['kind']} | {r['query']:.0f} ({r['query_cpu']:.0f}) | {verdict(r, 'query', QUERY_MS)} | "
              f"{r['change']} | {r['forward']:.0f} ({r['forward_cpu']:.0f}) | {verdict(r, 'forward', FORWARD_MS)} |")

if __name__ == "__main__":
    main()
