"""segviz.data: sample photographs and the synthetic Shapes dataset."""
import numpy as np
import pytest
import skimage.data
import torch
from matplotlib.figure import Figure

from segviz.data import (
    CLASSES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SAMPLE_IMAGES,
    Shapes,
    denormalize,
    normalize,
    sample_image,
)
from segviz.viz.data import plot_shapes


# --------------------------------------------------------------------------- sample_image
@pytest.mark.parametrize("name", SAMPLE_IMAGES)
def test_sample_image_forms_agree(name):
    img = sample_image(name, size=48)
    assert img.name == name
    assert img.tensor.shape == (1, 3, 48, 48) and img.tensor.dtype == torch.float32
    assert img.array.shape == (48, 48, 3) and img.array.dtype == np.uint8
    np.testing.assert_array_equal(denormalize(img.tensor), img.array)


def test_sample_image_original_size_and_normalisation():
    img = sample_image("chelsea")
    original = skimage.data.chelsea()
    np.testing.assert_array_equal(img.array, original)
    assert img.tensor.shape == (1, 3, *original.shape[:2])
    r, c = 100, 200
    expected = (original[r, c] / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(img.tensor[0, :, r, c].numpy(), expected, atol=1e-6)


def test_int_size_center_crops_instead_of_squashing():
    original = skimage.data.coffee()  # 400 x 600
    assert original.shape[:2] == (400, 600)
    # the square side equals the short side: a pure centre crop, no resampling
    np.testing.assert_array_equal(sample_image("coffee", 400).array, original[:, 100:500])
    # a smaller square is the resized centre crop: compare against a box-downsampled crop
    small = sample_image("coffee", 100).array.astype(float)
    boxed = original[:, 100:500].reshape(100, 4, 100, 4, 3).mean(axis=(1, 3))
    assert np.abs(small - boxed).mean() < 6


def test_pair_size_resizes_to_exactly_that():
    img = sample_image("rocket", (60, 90))
    assert img.array.shape == (60, 90, 3) and img.tensor.shape == (1, 3, 60, 90)
    original = skimage.data.rocket().astype(float)
    np.testing.assert_allclose(img.array.mean(axis=(0, 1)), original.mean(axis=(0, 1)), atol=3)


def test_sample_image_does_not_share_memory_between_calls():
    a = sample_image("astronaut", 32)
    a.array[:] = 0
    assert sample_image("astronaut", 32).array.any()


def test_unknown_image_lists_valid_names():
    with pytest.raises(ValueError, match="astronaut.*coffee"):
        sample_image("moon-landing")


@pytest.mark.parametrize("size", [0, -4, (32,), (1, 2, 3), 2.5, "big", (32, 0), True])
def test_bad_size(size):
    with pytest.raises(ValueError, match="size"):
        sample_image("astronaut", size)


def test_normalize_denormalize_round_trip_and_checks():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    x = normalize(arr)
    assert x.shape == (3, 5, 7)
    np.testing.assert_array_equal(denormalize(x), arr)
    batch = torch.stack([x, x])
    assert denormalize(batch).shape == (2, 5, 7, 3)
    with pytest.raises(ValueError):
        normalize(arr.astype(np.float32))
    with pytest.raises(ValueError):
        denormalize(torch.zeros(4, 5, 7))


# --------------------------------------------------------------------------- Shapes
def test_items_types_and_ranges():
    ds = Shapes(6, size=32, seed=1)
    assert len(ds) == 6 and ds.num_classes == len(CLASSES) == 5
    assert CLASSES == ("background", "circle", "rectangle", "triangle", "ellipse")
    image, label = ds[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert label.shape == (32, 32) and label.dtype == torch.int64
    for i in range(len(ds)):
        image, label = ds[i]
        torch.testing.assert_close(image, normalize(ds.array(i)), rtol=0, atol=0)
        np.testing.assert_array_equal(label.numpy(), ds.label_array(i))
        assert 0 <= int(label.min()) and int(label.max()) < 5
        assert 1 <= len(ds.layers(i)) <= 4
    torch.testing.assert_close(ds[-1][1], ds[5][1])


def test_images_and_labels_line_up_exactly():
    ds = Shapes(40, size=48, seed=7)
    for i in range(len(ds)):
        image, label, layers = ds.array(i), ds.label_array(i), ds.layers(i)
        background = np.array(ds.background(i))
        # background pixels keep the background colour
        assert (image[label == 0] == background).all()
        covered = np.zeros(label.shape, dtype=bool)
        # walk from the top shape down: the visible part of each shape carries its class and colour
        for layer in reversed(layers):
            visible = layer.mask & ~covered
            assert (label[visible] == layer.label).all()
            assert (image[visible] == np.array(layer.color)).all()
            covered |= layer.mask
        assert (covered == (label > 0)).all()


def test_shape_masks_have_the_geometry_their_class_names():
    ds = Shapes(60, size=48, seed=3)
    seen = set()
    for i in range(len(ds)):
        for layer in ds.layers(i):
            rows, cols = np.nonzero(layer.mask)
            box = layer.mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
            kind = CLASSES[layer.label]
            seen.add(kind)
            if kind == "rectangle":
                assert box.all()
            elif kind == "circle":
                assert 0.6 < box.mean() < 0.95
                assert not box[[0, 0, -1, -1], [0, -1, 0, -1]].any()  # round: the box corners stay empty
                np.testing.assert_array_equal(box, box.T)  # a disc is symmetric about its diagonal
            elif kind == "triangle":
                assert 0.35 < box.mean() < 0.7
                widths = box.sum(axis=1)
                assert (np.diff(widths) >= 0).all()  # pointing up: rows widen downwards
            elif kind == "ellipse":
                cov = np.cov(np.stack([rows, cols]).astype(float))
                small, large = np.linalg.eigvalsh(cov)
                assert np.sqrt(large / small) >= 1.5
    assert seen == set(CLASSES[1:])


def test_deterministic_per_seed_and_index():
    a, b = Shapes(12, size=32, seed=5), Shapes(30, size=32, seed=5)
    b[9]  # generating in a different order must not matter
    for i in range(12):
        np.testing.assert_array_equal(a.array(i), b.array(i))
        np.testing.assert_array_equal(a.label_array(i), b.label_array(i))
    c = Shapes(12, size=32, seed=6)
    assert any(not np.array_equal(a.label_array(i), c.label_array(i)) for i in range(12))
    assert not np.array_equal(a.array(0), a.array(1))


def test_every_class_present_and_backgrounds_vary():
    ds = Shapes(256, size=64, seed=0)
    labels = np.stack([ds[i][1].numpy() for i in range(len(ds))])
    counts = np.bincount(labels.ravel(), minlength=5)
    assert (counts > 0).all()
    assert 0.5 < counts[0] / counts.sum() < 0.95  # mostly background, but shapes are not rare
    backgrounds = {ds.background(i) for i in range(20)}
    assert len(backgrounds) > 10
    assert all(min(bg) >= 200 for bg in backgrounds)
    assert {len(ds.layers(i)) for i in range(len(ds))} == {1, 2, 3, 4}


@pytest.mark.parametrize(
    "kwargs", [dict(n=0), dict(n=2.5), dict(n=True), dict(n=4, size=8), dict(n=4, size="64"), dict(n=4, seed=-1)]
)
def test_bad_shapes_args(kwargs):
    with pytest.raises(ValueError):
        Shapes(**kwargs)


def test_index_errors():
    ds = Shapes(3, size=16)
    with pytest.raises(IndexError):
        ds[3]
    with pytest.raises(IndexError):
        ds[-4]
    with pytest.raises(TypeError):
        ds[1.0]


def test_plot_shapes_figure():
    ds = Shapes(4, size=32, seed=0)
    fig = plot_shapes(ds, [0, 1, 2, 3])
    assert isinstance(fig, Figure)
    image_axes = [ax for ax in fig.axes if ax.images]
    assert len(image_axes) == 8
    np.testing.assert_array_equal(image_axes[0].images[0].get_array(), ds.array(0))
    legend_texts = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert all(any(name in t for t in legend_texts) for name in CLASSES)
    with pytest.raises(ValueError):
        plot_shapes(ds, [])
