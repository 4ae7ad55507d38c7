import os

import numpy as np
import pytest
from PIL import Image

from vqgan_lc.data.images import ImageError, ImageRecord, class_names, list_images, load_image


def _save(path, color=(200, 10, 10), size=(8, 6)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _rgb(path, **kw):
    img = load_image(path, **kw)
    assert img.mode == "RGB"
    return np.asarray(img).astype(int)


# ---- list_images ---------------------------------------------------------------------------

def test_class_folders_sorted_labels_and_filters(tmp_path):
    _save(tmp_path / "zebra" / "b.jpg")
    _save(tmp_path / "zebra" / "nested" / "a.PNG")  # nested and upper-case extension
    _save(tmp_path / "ant" / "x.webp")
    _save(tmp_path / "ant" / ".hidden.jpg")
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()  # holds no image: not a class
    records = list_images(tmp_path)
    assert [(os.path.relpath(r.path, tmp_path), r.label, r.class_name) for r in records] == [
        ("ant/x.webp", 0, "ant"),
        ("zebra/b.jpg", 1, "zebra"),
        ("zebra/nested/a.PNG", 1, "zebra"),
    ]
    assert class_names(records) == ["ant", "zebra"]
    assert list_images(str(tmp_path)) == records  # deterministic, str or Path


def test_flat_folder_is_unlabelled(tmp_path):
    for name in ["c.bmp", "a.jpeg", "b.tiff", "d.gif", "e.ppm", "f.pgm"]:
        (_save(tmp_path / name) if not name.endswith(("gif", "pgm"))
         else Image.new("L", (4, 4)).save(tmp_path / name))
    records = list_images(tmp_path)
    assert [os.path.basename(r.path) for r in records] == [
        "a.jpeg", "b.tiff", "c.bmp", "d.gif", "e.ppm", "f.pgm"]
    assert all(r.label is None and r.class_name is None for r in records)
    assert class_names(records) == []


def test_mixed_folder_layout_is_an_error(tmp_path):
    _save(tmp_path / "top.jpg")
    _save(tmp_path / "cls" / "inner.jpg")
    with pytest.raises(ImageError, match="mixes images"):
        list_images(tmp_path)


def test_txt_list_labels_relative_paths_and_spaces(tmp_path):
    _save(tmp_path / "imgs" / "my photo.jpg")
    _save(tmp_path / "imgs" / "b.png")
    absolute = _save(tmp_path / "elsewhere" / "c.png")
    listing = tmp_path / "lists" / "train.txt"
    listing.parent.mkdir()
    listing.write_text(
        f"# comment\n../imgs/my photo.jpg\t3\n\n../imgs/b.png 0\n{absolute} 1\n"
    )
    records = list_images(listing)
    assert [r.label for r in records] == [3, 0, 1]  # the file's order is kept
    assert records[0].path == os.path.join(str(tmp_path / "lists"), "../imgs/my photo.jpg")
    assert all(os.path.isfile(r.path) for r in records)
    assert class_names(records) == ["0", "1", "3"]


def test_txt_list_unlabelled_and_errors(tmp_path):
    _save(tmp_path / "a photo.jpg")
    listing = tmp_path / "list.txt"
    listing.write_text("a photo.jpg\n")
    assert list_images(listing) == [ImageRecord(str(tmp_path / "a photo.jpg"), None, None)]

    listing.write_text("a photo.jpg 1\na photo.jpg\n")
    with pytest.raises(ImageError, match="label all or none"):
        list_images(listing)
    listing.write_text("missing.jpg\n")
    with pytest.raises(ImageError, match=r"list.txt:1: listed file does not exist"):
        list_images(listing)
    listing.write_text("a photo.jpg\tcat\n")
    with pytest.raises(ImageError, match="not an integer"):
        list_images(listing)
    listing.write_text("# only a comment\n")
    with pytest.raises(ImageError, match="no images found"):
        list_images(listing)


def test_missing_empty_and_wrong_sources(tmp_path):
    with pytest.raises(ImageError, match="no such file or folder"):
        list_images(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="no images found"):
        list_images(tmp_path / "empty")
    other = tmp_path / "data.csv"
    other.write_text("x")
    with pytest.raises(ImageError, match="expected a folder"):
        list_images(other)


# ---- load_image ----------------------------------------------------------------------------

def test_grayscale_and_bilevel(tmp_path):
    Image.new("L", (5, 4), 77).save(tmp_path / "g.png")
    Image.new("1", (5, 4), 1).save(tmp_path / "b.png")
    assert (_rgb(tmp_path / "g.png") == 77).all()
    assert (_rgb(tmp_path / "b.png") == 255).all()


def test_rgba_and_la_composited_on_white(tmp_path):
    pixels = np.zeros((2, 3, 4), np.uint8)
    pixels[0, 0] = (0, 0, 0, 0)  # fully transparent black -> white
    pixels[0, 1] = (0, 0, 255, 255)  # opaque blue stays blue
    pixels[0, 2] = (255, 0, 0, 128)  # half-transparent red over white
    Image.fromarray(pixels, "RGBA").save(tmp_path / "a.png")
    rgb = _rgb(tmp_path / "a.png")
    assert rgb[0, 0].tolist() == [255, 255, 255]
    assert rgb[0, 1].tolist() == [0, 0, 255]
    assert rgb[0, 2, 0] == 255 and 120 <= rgb[0, 2, 1] <= 135 and rgb[0, 2, 1] == rgb[0, 2, 2]
    Image.new("LA", (3, 3), (0, 0)).save(tmp_path / "la.png")
    assert (_rgb(tmp_path / "la.png") == 255).all()


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (4, 2), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    img.paste(1, (2, 0, 4, 2))  # right half: palette index 1 (red)
    img.save(tmp_path / "p.png", transparency=0)  # index 0 (black) is transparent
    rgb = _rgb(tmp_path / "p.png")
    assert (rgb[:, :2] == 255).all()
    assert (rgb[:, 2:] == [255, 0, 0]).all()
    Image.new("L", (2, 2), 0).save(tmp_path / "lt.png", transparency=0)  # tRNS on grayscale
    assert (_rgb(tmp_path / "lt.png") == 255).all()


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    assert _rgb(tmp_path / "g16.png")[0, :, 0].tolist() == [0, 1, 128, 255]


def test_int32_and_float_tiffs(tmp_path):
    Image.fromarray(np.array([[0, 65535]], np.int32)).save(tmp_path / "i.tif")
    assert _rgb(tmp_path / "i.tif")[0, :, 1].tolist() == [0, 255]
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)).save(tmp_path / "f.tif")
    assert _rgb(tmp_path / "f.tif")[0, :, 2].tolist() == [0, 128, 255]


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    rgb = _rgb(tmp_path / "c.jpg")
    assert (np.abs(rgb - [255, 0, 0]) <= 8).all()


def test_exif_orientation_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    img.save(tmp_path / "r.jpg", exif=exif, quality=95)
    rgb = _rgb(tmp_path / "r.jpg")
    assert rgb.shape == (40, 20, 3)  # now portrait
    assert rgb[5, 10, 0] > 200 and rgb[5, 10, 2] < 50  # top is the red (former left) half
    assert rgb[35, 10, 2] > 200 and rgb[35, 10, 0] < 50


def test_first_frame_of_animated_gif(tmp_path):
    frames = [Image.new("P", (4, 4), i) for i in range(2)]
    for f in frames:
        f.putpalette([0, 255, 0, 0, 0, 255] + [0] * 762)
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    assert (_rgb(tmp_path / "a.gif") == [0, 255, 0]).all()


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_file_raises(tmp_path, suffix):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / f"full{suffix}")
    data = (tmp_path / f"full{suffix}").read_bytes()
    (tmp_path / f"cut{suffix}").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=rf"cut{suffix}: cannot decode image"):
        load_image(tmp_path / f"cut{suffix}")


def test_garbage_empty_and_missing_files_raise_one_line_errors(tmp_path):
    (tmp_path / "g.jpg").write_bytes(os.urandom(300))
    (tmp_path / "e.png").write_bytes(b"")
    for name in ["g.jpg", "e.png"]:
        with pytest.raises(ImageError) as info:
            load_image(tmp_path / name)
        assert name in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "absent.png")


def test_min_short_side_decodes_large_jpeg_at_reduced_scale(tmp_path):
    y, x = np.mgrid[0:768, 0:1024]
    smooth = np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "big.jpg", quality=95)
    full = load_image(tmp_path / "big.jpg")
    reduced = load_image(tmp_path / "big.jpg", min_short_side=100)
    assert full.size == (1024, 768)
    assert 100 <= min(reduced.size) < 768
    assert reduced.width * 768 == reduced.height * 1024  # aspect ratio kept
    # The reduced decode is the same picture, not a crop.
    shrunk = np.asarray(full.resize(reduced.size, Image.Resampling.BOX)).astype(int)
    assert np.abs(shrunk - np.asarray(reduced).astype(int)).mean() < 6


# ---- symlink loops -----------------------------------------------------------------------

def test_symlink_loop_in_a_flat_folder_lists_each_image_once(tmp_path):
    _save(tmp_path / "a.jpg")
    os.symlink(".", tmp_path / "loop", target_is_directory=True)
    records = list_images(tmp_path)
    assert [os.path.relpath(r.path, tmp_path) for r in records] == ["a.jpg"]
    assert records[0].label is None


def test_symlink_loops_inside_class_folders_list_each_image_once(tmp_path):
    _save(tmp_path / "cat" / "a.jpg")
    _save(tmp_path / "cat" / "sub" / "b.jpg")
    os.symlink(".", tmp_path / "cat" / "loop", target_is_directory=True)
    os.symlink("..", tmp_path / "cat" / "sub" / "up", target_is_directory=True)
    os.symlink("..", tmp_path / "cat" / "root", target_is_directory=True)  # back to the top folder
    _save(tmp_path / "dog" / "c.jpg")
    outside = tmp_path.parent / (tmp_path.name + "-linked")
    _save(outside / "d.jpg")
    os.symlink(outside, tmp_path / "dog" / "more", target_is_directory=True)  # a real folder: followed
    records = list_images(tmp_path)
    assert [(os.path.relpath(r.path, tmp_path), r.label) for r in records] == [
        ("cat/a.jpg", 0), ("cat/sub/b.jpg", 0), ("dog/c.jpg", 1), ("dog/more/d.jpg", 1)]
