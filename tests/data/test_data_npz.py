"""ADM-format .npz batches: arr_0 read in row chunks equals np.load, labels, one-line errors."""
import numpy as np
import pytest

from vqgan_lc.data.npz import NpzImages, is_stats_npz, npz_keys


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, size=(29, 6, 5, 3), dtype=np.uint8)


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_chunked_reader_equals_np_load(tmp_path, images, save):
    path = tmp_path / "samples.npz"
    labels = np.arange(29) % 4
    save(path, images, labels)  # arr_0, arr_1: the ADM sample batch layout
    reader = NpzImages(path)
    assert len(reader) == 29 and reader.image_size == (6, 5)
    with np.load(path) as data:
        whole = data["arr_0"]
    chunks = list(reader.batches(0, 29, batch_size=8))
    assert [c.shape[0] for c in chunks] == [8, 8, 8, 5]
    assert np.array_equal(np.concatenate(chunks), whole)
    assert np.array_equal(np.concatenate(list(reader.batches(11, 20, batch_size=4))), whole[11:20])  # a rank's slice
    assert np.array_equal(reader.labels(), labels)
    assert npz_keys(path) == ["arr_0", "arr_1"] and not is_stats_npz(path)


def test_unlabelled_batch_and_stats_detection(tmp_path, images):
    np.savez(tmp_path / "a.npz", arr_0=images)
    assert NpzImages(tmp_path / "a.npz").labels() is None
    np.savez(tmp_path / "ref.npz", mu=np.zeros(3), sigma=np.eye(3), mu_s=np.zeros(2), sigma_s=np.eye(2))
    assert is_stats_npz(tmp_path / "ref.npz")


def test_bad_batches_fail_in_one_line(tmp_path, images):
    np.savez(tmp_path / "floats.npz", images.astype(np.float32))
    np.savez(tmp_path / "gray.npz", images[..., 0])
    np.savez(tmp_path / "nothing.npz", other=np.zeros(2))
    (tmp_path / "text.npz").write_text("not a zip")
    for name, match in (("floats", "uint8"), ("gray", "uint8"), ("nothing", "no arr_0"), ("text", "not a readable")):
        with pytest.raises(ValueError, match=match) as err:
            NpzImages(tmp_path / f"{name}.npz")
        assert "\n" not in str(err.value)
    np.savez(tmp_path / "labels.npz", images, np.zeros(3))
    with pytest.raises(ValueError, match="one integer label per image"):
        NpzImages(tmp_path / "labels.npz").labels()
