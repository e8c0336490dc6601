"""The 'folder:<dir>' image source of diffmem.data: PNG / JPEG files written here, read back exactly."""
import os

import matplotlib.image
import numpy as np
import pytest
from PIL import Image

from diffmem import data


def _write(path, array, mode=None, **kw):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array, mode).save(path, **kw) if mode else Image.fromarray(array).save(path, **kw)


def _rgb(rng, n, h=6, w=6):
    return rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_flat_folder_sorted_exact_and_unlabelled(tmp_path):
    rng = np.random.default_rng(0)
    imgs = _rgb(rng, 4)
    names = ["b.png", "a.PNG", "d.png", "c.png"]            # load order = sorted names (upper case sorts first)
    for name, im in zip(names, imgs):
        _write(str(tmp_path / name), im)
    (tmp_path / "notes.txt").write_text("not an image")     # ignored
    _write(str(tmp_path / ".hidden.png"), imgs[0])           # ignored
    d = data.load_images(f"folder:{tmp_path}")
    order = sorted(range(4), key=lambda i: names[i])
    assert [os.path.basename(p) for p in data.folder_files(str(tmp_path))[0]] == sorted(names)
    assert d.images.shape == (4, 6, 6, 3) and d.images.dtype == np.float32
    np.testing.assert_array_equal(d.images, imgs[order].astype(np.float32) / np.float32(127.5) - np.float32(1))
    np.testing.assert_array_equal(d.labels, -1)
    np.testing.assert_array_equal(d.indices, np.arange(4))
    assert d.num_classes == 0 and d.name == f"folder:{tmp_path}"


def test_class_subfolders_give_labels_and_balanced_subsets(tmp_path):
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (9, 4, 4), dtype=np.uint8)
    layout = {"zebra": [0, 1, 2], "ant": [3, 4, 5], "cat": [6, 7, 8]}
    for cls, ids in layout.items():
        for i in ids:
            _write(str(tmp_path / cls / f"{i:02d}.png"), imgs[i], "L")
    os.makedirs(tmp_path / "empty_class")                   # no images: not a class
    d = data.load_images(f"folder:{tmp_path}")
    assert d.num_classes == 3 and d.image_shape == (4, 4, 1)
    np.testing.assert_array_equal(d.labels, [0, 0, 0, 1, 1, 1, 2, 2, 2])   # ant, cat, zebra
    np.testing.assert_array_equal(d.images[..., 0], imgs[[3, 4, 5, 6, 7, 8, 0, 1, 2]] / np.float32(127.5) - 1)
    paths, labels, classes = data.folder_files(str(tmp_path))
    assert classes == ["ant", "cat", "zebra"] and labels.tolist() == d.labels.tolist()
    b = data.load_images(f"folder:{tmp_path}", n=6, seed=2, class_balanced=True)
    assert np.bincount(b.labels).tolist() == [2, 2, 2]
    np.testing.assert_array_equal(b.images, d.images[b.indices])


def test_subset_reads_only_chosen_files_and_follows_the_seed_rule(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    for i, im in enumerate(_rgb(rng, 10)):
        _write(str(tmp_path / f"{i}.png"), im)
    full = data.load_images(f"folder:{tmp_path}")
    read = []
    orig = data.read_image_file
    monkeypatch.setattr(data, "read_image_file", lambda p: read.append(p) or orig(p))
    d = data.load_images(f"folder:{tmp_path}", n=3, seed=5)
    assert len(read) == 3
    np.testing.assert_array_equal(d.indices, np.sort(np.random.default_rng(5).permutation(10)[:3]))
    np.testing.assert_array_equal(d.images, full.images[d.indices])


def test_modes_alpha_palette_bilevel_and_jpeg(tmp_path):
    rng = np.random.default_rng(3)
    rgb = _rgb(rng, 1)[0]
    # matplotlib.image.imsave writes RGBA with an opaque alpha: read back as RGB, exactly
    os.makedirs(tmp_path / "mpl")
    matplotlib.image.imsave(tmp_path / "mpl" / "x.png", rgb)
    np.testing.assert_array_equal(data.load_images(f"folder:{tmp_path / 'mpl'}").images[0],
                                  rgb / np.float32(127.5) - 1)
    pal = Image.fromarray(rgb).quantize(colors=8)           # palette image: expanded to its RGB colours
    os.makedirs(tmp_path / "pal")
    pal.save(tmp_path / "pal" / "p.png")
    np.testing.assert_array_equal(data.load_images(f"folder:{tmp_path / 'pal'}").images[0],
                                  np.asarray(pal.convert("RGB")) / np.float32(127.5) - 1)
    bits = rng.integers(0, 2, (5, 7)).astype(bool)
    os.makedirs(tmp_path / "bits")
    Image.fromarray(bits).save(tmp_path / "bits" / "b.png")  # mode '1'
    got = data.load_images(f"folder:{tmp_path / 'bits'}").images
    assert got.shape == (1, 5, 7, 1)
    np.testing.assert_array_equal(got[0, ..., 0], np.where(bits, 1.0, -1.0))
    smooth = np.tile(np.linspace(0, 255, 16).astype(np.uint8)[None, :, None], (16, 1, 3))
    _write(str(tmp_path / "jpg" / "s.JPEG"), smooth, quality=100)
    j = data.load_images(f"folder:{tmp_path / 'jpg'}").images
    assert j.shape == (1, 16, 16, 3) and np.abs(j[0] - (smooth / 127.5 - 1)).max() < 0.05   # lossy, but close


def test_crop_and_pool_apply_after_loading(tmp_path):
    rng = np.random.default_rng(4)
    imgs = _rgb(rng, 2, 8, 8)
    for i, im in enumerate(imgs):
        _write(str(tmp_path / f"{i}.png"), im)
    d = data.load_images(f"folder:{tmp_path}", crop=4, pool=2)
    x = imgs[:, 2:6, 2:6].astype(np.float32) / np.float32(127.5) - 1
    np.testing.assert_allclose(d.images, x.reshape(2, 2, 2, 2, 2, 3).mean((2, 4)), rtol=1e-6)
    assert d.name == f"folder:{tmp_path}:crop4:pool2"


def test_errors(tmp_path):
    rng = np.random.default_rng(5)
    with pytest.raises(ValueError, match="no such directory"):
        data.load_images(f"folder:{tmp_path / 'missing'}")
    os.makedirs(tmp_path / "empty")
    with pytest.raises(ValueError, match="no .png/.jpg/.jpeg files"):
        data.load_images(f"folder:{tmp_path / 'empty'}")
    _write(str(tmp_path / "sizes" / "a.png"), _rgb(rng, 1, 6, 6)[0])
    _write(str(tmp_path / "sizes" / "b.png"), _rgb(rng, 1, 6, 6)[0])
    _write(str(tmp_path / "sizes" / "c.png"), _rgb(rng, 1, 8, 4)[0])
    with pytest.raises(ValueError, match=r"differ in size: 2 of 6x6 \(e.g. 'a.png'\), 1 of 8x4 \(e.g. 'c.png'\); "
                                         r"diffmem never resizes"):
        data.load_images(f"folder:{tmp_path / 'sizes'}")
    _write(str(tmp_path / "modes" / "a.png"), _rgb(rng, 1)[0])
    _write(str(tmp_path / "modes" / "b.png"), rng.integers(0, 256, (6, 6), dtype=np.uint8), "L")
    with pytest.raises(ValueError, match=r"mix grayscale and RGB: 1 grayscale \(e.g. 'b.png'\), 1 RGB"):
        data.load_images(f"folder:{tmp_path / 'modes'}")
    rgba = np.concatenate([_rgb(rng, 1)[0], np.full((6, 6, 1), 255, np.uint8)], -1)
    rgba[0, 0, 3] = 10
    _write(str(tmp_path / "alpha" / "a.png"), rgba)
    with pytest.raises(ValueError, match="alpha channel is not fully opaque"):
        data.load_images(f"folder:{tmp_path / 'alpha'}")
    _write(str(tmp_path / "deep" / "a.png"), rng.integers(0, 65535, (4, 4), dtype=np.uint16))   # 16-bit PNG
    with pytest.raises(ValueError, match="mode 'I;16' is not supported"):
        data.load_images(f"folder:{tmp_path / 'deep'}")
    _write(str(tmp_path / "both" / "a.png"), _rgb(rng, 1)[0])
    _write(str(tmp_path / "both" / "cls" / "b.png"), _rgb(rng, 1)[0])
    with pytest.raises(ValueError, match="both directly"):
        data.load_images(f"folder:{tmp_path / 'both'}")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="not a readable PNG / JPEG"):
        data.load_images(f"folder:{tmp_path / 'bad'}")
    with pytest.raises(ValueError, match="split must be 'train' for 'folder:'"):
        data.load_images(f"folder:{tmp_path / 'sizes'}", split="test")
    with pytest.raises(ValueError, match="'folder:<dir>'"):
        data.load_images("folder:")
