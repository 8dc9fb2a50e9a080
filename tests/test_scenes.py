"""segviz.data.Scenes: exact, aligned labels and instances; shape, not colour, decides the class; clips."""
import numpy as np
import pytest
import torch

from segviz.data import IMAGENET_MEAN, IMAGENET_STD, SCENE_CLASSES, Scenes
from segviz.data.scenes import SceneObject, shape_mask


@pytest.fixture(scope="module")
def scenes():
    return Scenes(40, size=128, seed=3)


def test_items_are_normalised_images_and_int64_labels(scenes):
    image, label = scenes[0]
    assert image.shape == (3, 128, 128) and image.dtype == torch.float32
    assert label.shape == (128, 128) and label.dtype == torch.int64
    expected = (scenes.array(0) / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(image.permute(1, 2, 0).numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(label.numpy(), scenes.label_array(0))
    assert 0 <= label.min() and label.max() < len(SCENE_CLASSES) == scenes.num_classes == 6


def test_deterministic_per_seed_split_and_index():
    a, b = Scenes(5, 64, seed=1), Scenes(5, 64, seed=1)
    for i in range(5):
        np.testing.assert_array_equal(a.array(i), b.array(i))
    # a fresh object generates the same item without having seen the earlier ones
    np.testing.assert_array_equal(Scenes(5, 64, seed=1).array(4), a.array(4))
    assert not np.array_equal(Scenes(5, 64, seed=2).array(0), a.array(0))
    assert not np.array_equal(Scenes(5, 64, seed=1, split="val").array(0), a.array(0))


def test_semantic_and_instance_maps_are_aligned_with_the_image(scenes):
    for i in range(len(scenes)):
        scene = scenes.scene(i)
        objects = scene.objects
        classes_by_id = np.array([0] + [o.label for o in objects])
        # the semantic map is the class of the visible instance; background where none is
        np.testing.assert_array_equal(scene.semantic, classes_by_id[scene.instances])
        for k, obj in enumerate(objects, start=1):
            visible = scene.instances == k
            # an instance only shows where its shape is, and where no later object covers it
            assert not (visible & ~shape_mask(obj, 128)).any()
            later = np.zeros_like(visible)
            for other in objects[k:]:
                later |= shape_mask(other, 128)
            np.testing.assert_array_equal(visible, shape_mask(obj, 128) & ~later)


def test_image_pixels_are_painted_from_the_same_masks():
    scenes = Scenes(10, size=96, seed=0)
    for i in range(10):
        scene = scenes.scene(i)
        for k, obj in enumerate(scene.objects, start=1):
            if obj.fill != "flat":
                continue
            visible = scene.instances == k
            # a flat object shows exactly its colour on every visible pixel
            assert (scene.image[visible] == np.array(obj.colors[0])).all()


def test_instance_masks_form_a_partition(scenes):
    for i in range(len(scenes)):
        scene = scenes.scene(i)
        ids, classes, masks = scene.instance_masks()
        assert masks.dtype == bool and masks.shape == (len(ids), 128, 128)
        assert (masks.sum(0) <= 1).all()                                   # disjoint
        np.testing.assert_array_equal(masks.any(0), scene.semantic > 0)   # cover every object pixel
        for c, m in zip(classes, masks):
            assert m.any() and (scene.semantic[m] == c).all()
        torch_classes, torch_masks = scenes.instances(i)
        np.testing.assert_array_equal(torch_classes.numpy(), classes)
        np.testing.assert_array_equal(torch_masks.numpy(), masks)


def test_occlusion_scale_and_class_variety():
    scenes = Scenes(150, size=128, seed=0)
    extents, occluded, classes = [], 0, set()
    for i in range(150):
        scene = scenes.scene(i)
        for k, obj in enumerate(scene.objects, start=1):
            extents.append(obj.extent / 128)
            classes.add(obj.label)
            full, shown = shape_mask(obj, 128).sum(), (scene.instances == k).sum()
            occluded += bool(full and shown < full)
    assert classes == set(range(1, 6))
    assert min(extents) < 0.08 and max(extents) > 0.45        # small to half the image
    assert occluded > 100                                      # occlusion is common


def test_colour_and_fill_carry_no_class_information():
    """Per class, the fills and the mean colour of the objects follow the same distribution."""
    scenes = Scenes(300, size=32, seed=0)
    objects = [o for i in range(300) for o in scenes.objects(i)]
    for label in range(1, 6):
        mine = [o for o in objects if o.label == label]
        assert len(mine) > 150
        mean_color = np.mean([o.colors[0] for o in mine], axis=0)
        assert np.all(np.abs(mean_color - 127.5) < 15), (label, mean_color)
        fills = {f: sum(o.fill == f for o in mine) / len(mine) for f in ("flat", "gradient", "stripes", "checker")}
        assert all(0.15 < share < 0.35 for share in fills.values()), (label, fills)


@pytest.mark.parametrize("label, area", [(1, np.pi), (3, None), (4, 3 * np.sqrt(3) / 4)])
def test_shape_geometry(label, area):
    """Areas of a large disc / triangle in units of the bounding radius² match the formulas;
    a rectangle fits its bounding circle (its corners touch it)."""
    size, radius = 400, 150.0
    obj = SceneObject(label=label, center=(200.0, 200.0), extent=2 * radius, angle=0.3,
                      shape=(2.0,) if label == 3 else (), fill="flat", colors=((0, 0, 0), (0, 0, 0)),
                      fill_angle=0.0, fill_period=8.0, velocity=(0.0, 0.0), spin=0.0)
    mask = shape_mask(obj, size)
    if area is None:                       # rectangle with aspect 2: sides 2a, 2b, a = 2b, a² + b² = 1
        b = 1 / np.sqrt(5)
        area = 4 * 2 * b * b
    assert mask.sum() / radius**2 == pytest.approx(area, rel=0.01)
    rows, cols = np.nonzero(mask)
    assert np.max(np.hypot(cols + 0.5 - 200, rows + 0.5 - 200)) <= radius + 1e-6


def test_ring_has_a_hole_and_cross_has_arms():
    base = dict(center=(100.0, 100.0), extent=160.0, angle=0.0, fill="flat", colors=((0, 0, 0), (0, 0, 0)),
                fill_angle=0.0, fill_period=8.0, velocity=(0.0, 0.0), spin=0.0)
    ring = shape_mask(SceneObject(label=2, shape=(0.5,), **base), 200)
    assert not ring[100, 100] and ring[100, 100 + 60]          # hole at the centre, band at 0.75 R
    cross = shape_mask(SceneObject(label=5, shape=(0.3,), **base), 200)
    assert cross[100, 100] and cross[100, 170] and cross[170, 100] and not cross[150, 150]


def test_clip_keeps_instance_ids_while_objects_move():
    scenes = Scenes(4, size=128, seed=0)
    clip = scenes.clip(2, frames=6)
    assert len(clip) == 6
    np.testing.assert_array_equal(clip[0].image, scenes.array(2))
    np.testing.assert_array_equal(clip[0].instances, scenes.scene(2).instances)
    labels = [o.label for o in clip[0].objects]
    for frame in clip:
        assert [o.label for o in frame.objects] == labels          # same ids, same classes, same depth
        classes_by_id = np.array([0] + labels)
        np.testing.assert_array_equal(frame.semantic, classes_by_id[frame.instances])
    # every object moves, and stays within the image (bouncing at the border)
    for t, frame in enumerate(clip[1:], start=1):
        for before, now in zip(clip[0].objects, frame.objects):
            assert now.center != before.center
            assert all(0 <= c <= 128 for c in now.center)
    assert not np.array_equal(clip[0].instances, clip[-1].instances)


def test_default_size_gives_every_stage_a_real_grid():
    """At 256 px SegFormer's stage-1 keys at the training ratio 8 form an 8 x 8 grid, and a Swin
    stage-1 map (stride 4) holds several 7 x 7 windows in each direction."""
    import segviz

    size = Scenes(1).size
    assert size == 256
    sr = segviz.create_model("segformer-nano").segviz_config["sr_ratios"][0]
    assert size // 4 // sr >= 8
    assert size // 4 // 7 >= 3


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=0), "n must be an int >= 1"),
    (dict(n=4, size=16), "size must be an int >= 32"),
    (dict(n=4, seed=-1), "seed must be an int >= 0"),
    (dict(n=4, split="test"), "split must be one of"),
    (dict(n=2.5), "n must be an int"),
])
def test_bad_settings_are_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Scenes(**kwargs)


def test_bad_index_and_frames():
    scenes = Scenes(3, size=32)
    with pytest.raises(IndexError):
        scenes[3]
    with pytest.raises(TypeError):
        scenes["0"]
    with pytest.raises(ValueError, match="frames must be an int >= 1"):
        scenes.clip(0, frames=0)
    assert scenes[-1][1].shape == (32, 32)


def test_panoptic_target_stacks_the_class_map_over_the_instance_ids():
    semantic, panoptic = Scenes(2, size=64), Scenes(2, size=64, target="panoptic")
    for i in range(2):
        image, label = panoptic[i]
        assert torch.equal(image, semantic[i][0]) and label.shape == (2, 64, 64)
        assert torch.equal(label[0], semantic[i][1])
        assert np.array_equal(label[1].numpy(), panoptic.scene(i).instances)
    # the semantic set keeps its old description (trainer cache keys), the panoptic one says so
    assert "target" not in semantic.description() and panoptic.description()["target"] == "panoptic"
    assert "target='panoptic'" in repr(panoptic)
    with pytest.raises(ValueError, match="target must be one of"):
        Scenes(2, target="instances")
