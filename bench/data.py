"""Datasets and loaders.

Small datasets (digits, CIFAR, SVHN, STL-10, and image folders whose augmented store fits in
`data.resident_gb`, e.g. Tiny-ImageNet) are held whole on the training device and augmented there,
batched: random crop with zero padding, horizontal flip, normalisation, m independent views at once
(PCL's multiple input augmentation), reshuffled each epoch from a generator seeded by (seed, epoch),
so a run resumed at an epoch boundary sees exactly the batches it would have seen.
ImageNet and large image folders are read by a multi-worker DataLoader.

Datasets come from the registry (`register_dataset`, also for plug-ins) or from the command line as
`NAME=imagefolder:ROOT` / `NAME=tinyimagenet:ROOT`. `data.image_size` resizes any of them once to a square
size. Mean/std not given are computed once from the training split and cached (`$OKD_BENCH_CACHE`, default
`~/.cache/okd-bench`), as are decoded image folders.

Every training loader yields `(views, target)`: a list of `views` augmented batches and the labels.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from bench.errors import UsageError
from bench.registry import Registry

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DIGITS_MEAN, DIGITS_STD = (0.3054,) * 3, (0.3760,) * 3  # the digits training split


@dataclass
class TensorSplit:
    """A whole split as uint8 images [N, C, H, W] and int64 labels [N]."""

    images: Tensor
    labels: Tensor


@dataclass
class DatasetSpec:
    """What the trainer needs to know of a dataset, and how to load it."""

    name: str
    num_classes: int
    image_size: int
    mean: tuple[float, ...] | None  # None: computed once from the training split and cached
    std: tuple[float, ...] | None
    pad: int  # zero padding of the random crop (0: no crop)
    flip: bool
    load: Callable[..., TensorSplit | Path | ImageList]  # (data config, train?) -> a split held whole, an
    # ImageFolder root or a list of image files (streamed through a DataLoader)
    description: str = ""
    resized_crop: bool = False  # streamed training crops: RandomResizedCrop (ImageNet) instead of pad + crop
    stats_key: str = ""  # what identifies the data for the mean/std cache (default: name + data root)


@dataclass
class ImageList:
    """Image files with their labels (index into `classes`), read one at a time."""

    samples: list[tuple[str, int]]
    classes: list[str]
    where: str  # the folder, for messages


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Register a dataset under `spec.name` (built-ins and plug-ins alike); a taken name is an error."""
    DATASETS.register(spec.name)(spec)
    return spec


# ---------------------------------------------------------------------------------------------
# loading


def load_digits(data_cfg, train: bool) -> TensorSplit:
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), a fixed stratified 80/20 split,
    grey levels 0..16 scaled to 0..255 and repeated to 3 channels."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    idx_train, idx_test = train_test_split(np.arange(len(images)), test_size=0.2, stratify=bunch.target,
                                           random_state=0)
    idx = idx_train if train else idx_test
    x = torch.from_numpy(images[idx]).unsqueeze(1).repeat(1, 3, 1, 1).contiguous()
    return TensorSplit(x, torch.from_numpy(bunch.target[idx]).long())


def _cifar_loader(cls_name: str, folder: str, label: str):
    def load(data_cfg, train: bool) -> TensorSplit:
        import torchvision

        root = Path(data_cfg.root).expanduser()
        if not data_cfg.download and not (root / folder).is_dir():
            raise UsageError(
                f"{label} not found: expected {root / folder}/ (the python version of the dataset); "
                f"set --data-root to the folder that holds {folder}/, or pass --download to fetch it"
            )
        try:
            ds = getattr(torchvision.datasets, cls_name)(str(root), train=train, download=data_cfg.download)
        except RuntimeError as err:
            raise UsageError(f"{label} at {root / folder} is unreadable: {err}") from None
        x = torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        return TensorSplit(x, torch.as_tensor(ds.targets, dtype=torch.long))

    return load


def _torchvision_loader(cls_name: str, folder: str, label: str, splits: tuple[str, str]):
    """SVHN and STL-10 (torchvision, `split=`): labelled train and test splits as uint8 tensors."""

    def load(data_cfg, train: bool) -> TensorSplit:
        import torchvision

        root = Path(data_cfg.root).expanduser()
        if not data_cfg.download and not (root / folder).exists():
            raise UsageError(f"{label} not found: expected {root / folder} (torchvision's layout); set --data-root "
                             f"to the folder that holds it, or pass --download to fetch it")
        try:
            ds = getattr(torchvision.datasets, cls_name)(str(root),
                                                         split=splits[0] if train else splits[1],
                                                         download=data_cfg.download)
        except RuntimeError as err:
            raise UsageError(f"{label} at {root / folder} is unreadable: {err}") from None
        return TensorSplit(torch.from_numpy(np.ascontiguousarray(ds.data)), torch.as_tensor(ds.labels).long())

    return load


def load_imagenet(data_cfg, train: bool) -> Path:
    folder = Path(data_cfg.root).expanduser() / ("train" if train else "val")
    if not folder.is_dir():
        raise UsageError(
            f"ImageNet not found: expected an ImageFolder tree at {folder}/ (one sub-folder per class); "
            "set --data-root to the folder holding train/ and val/ (downloading ImageNet is manual)"
        )
    return folder


register_dataset(DatasetSpec("digits", 10, 8, DIGITS_MEAN, DIGITS_STD, pad=1, flip=False, load=load_digits,
                      description="scikit-learn's bundled 8x8 digits; offline, CPU-sized (the demo)"))
register_dataset(DatasetSpec("cifar10", 10, 32, CIFAR10_MEAN, CIFAR10_STD, pad=4, flip=True,
                      load=_cifar_loader("CIFAR10", "cifar-10-batches-py", "CIFAR-10"),
                      description="CIFAR-10 via torchvision (--data-root, --download)"))
register_dataset(DatasetSpec("cifar100", 100, 32, CIFAR100_MEAN, CIFAR100_STD, pad=4, flip=True,
                      load=_cifar_loader("CIFAR100", "cifar-100-python", "CIFAR-100"),
                      description="CIFAR-100 via torchvision (--data-root, --download)"))
register_dataset(DatasetSpec("imagenet", 1000, 224, IMAGENET_MEAN, IMAGENET_STD, pad=0, flip=True, load=load_imagenet,
                      description="ImageFolder tree <data-root>/{train,val}/<class>/*.JPEG", resized_crop=True))
register_dataset(DatasetSpec("svhn", 10, 32, None, None, pad=4, flip=False,
                      load=_torchvision_loader("SVHN", "train_32x32.mat", "SVHN", ("train", "test")),
                      description="SVHN via torchvision (train/test; --data-root, --download)"))
register_dataset(DatasetSpec("stl10", 10, 96, None, None, pad=12, flip=True,
                      load=_torchvision_loader("STL10", "stl10_binary", "STL-10", ("train", "test")),
                      description="STL-10 labelled splits via torchvision, 96x96 (--data-root, --download)"))
register_dataset(DatasetSpec("tinyimagenet", 200, 64, None, None, pad=8, flip=True,
                      load=lambda data_cfg, train: load_tinyimagenet(Path(data_cfg.root) / "tiny-imagenet-200",
                                                                     "tinyimagenet", data_cfg, train, 64),
                      description="Tiny-ImageNet as distributed: <data-root>/tiny-imagenet-200 (manual download)"))


# ---------------------------------------------------------------------------------------------
# image folders and Tiny-ImageNet


def cache_dir() -> Path:
    """Where computed statistics and decoded image folders are cached."""
    env = os.environ.get("OKD_BENCH_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "okd-bench"


@functools.cache
def image_extensions() -> tuple[str, ...]:
    """Every file extension Pillow reads."""
    from PIL import Image

    return tuple(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def _images_in(folder: Path) -> list[Path]:
    exts = image_extensions()
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in exts and p.is_file())


def scan_imagefolder(root: Path, name: str, train: bool) -> ImageList:
    """`<root>/train/<class>/*` or `<root>/val/<class>/*` (any depth below the class folder)."""
    split = "train" if train else "val"
    folder = Path(root) / split
    if not folder.is_dir():
        raise UsageError(f"dataset {name}: {folder}/ not found (an image folder holds {root}/train/<class>/* and "
                         f"{root}/val/<class>/*)")
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise UsageError(f"dataset {name}: {folder}/ has no class folders (expected {folder}/<class>/<image>)")
    samples = [(str(p), i) for i, c in enumerate(classes) for p in _images_in(folder / c)]
    if not samples:
        raise UsageError(f"dataset {name}: no images under {folder}/ (looked for {', '.join(image_extensions()[:6])}"
                         ", ... files in its class folders)")
    return ImageList(samples, classes, str(folder))


def scan_tinyimagenet(root: Path, name: str, train: bool) -> ImageList:
    """Tiny-ImageNet as distributed: train/<wnid>/images/*.JPEG, val/images/*.JPEG labelled by
    val/val_annotations.txt (file, wnid, box)."""
    root = Path(root)
    if not (root / "train").is_dir():
        raise UsageError(f"dataset {name}: {root}/train/ not found (Tiny-ImageNet as distributed: "
                         f"tiny-imagenet-200/{{train,val}}; download and unzip it by hand)")
    classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
    index = {c: i for i, c in enumerate(classes)}
    if train:
        samples = [(str(p), index[c]) for c in classes for p in _images_in(root / "train" / c)]
        where = root / "train"
    else:
        notes = root / "val" / "val_annotations.txt"
        if not notes.is_file():
            raise UsageError(f"dataset {name}: {notes} not found (Tiny-ImageNet's val/ labels its images there)")
        samples = []
        for n, line in enumerate(notes.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            parts = line.split("\t")
            if not line.strip():
                continue
            if len(parts) < 2 or parts[1] not in index:
                raise UsageError(f"dataset {name}: {notes} line {n}: expected '<file>\\t<wnid>\\t...' with a "
                                 f"class of train/, got {line[:60]!r}")
            samples.append((str(root / "val" / "images" / parts[0]), index[parts[1]]))
        where = root / "val"
    if not samples:
        raise UsageError(f"dataset {name}: no images under {where}/")
    return ImageList(samples, classes, str(where))


SCANNERS = {"imagefolder": scan_imagefolder, "tinyimagenet": scan_tinyimagenet}


@functools.lru_cache(maxsize=32)
def scan(kind: str, root: str, name: str, train: bool) -> ImageList:
    """A listed dataset's split, listed once per process (the checks, the build check and the loaders all ask;
    listing Tiny-ImageNet walks 100,000 files). A failed listing is not remembered."""
    return SCANNERS[kind](Path(root), name, train)


MIN_IMAGE_SIDE = 8  # the smallest images any registered network trains on (digits are 8x8)


def _verify_image(path: str) -> str | None:
    """What is wrong with an image file (None when it decodes completely and is large enough)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()  # the whole file: a truncated image whose header reads fails here
            width, height = img.size
    except (OSError, ValueError, SyntaxError) as err:
        return f"is not a readable image ({err})"
    if min(width, height) < MIN_IMAGE_SIDE:
        return f"is {width}x{height} pixels; images need at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}"
    return None


def check_image_lists(train: ImageList, val: ImageList, name: str) -> None:
    """Same classes in both splits, no class without images in either, and every file decodes completely into an
    image of at least MIN_IMAGE_SIDE pixels a side (checked once per listing, remembered in the cache); one line
    naming the first offender otherwise."""
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        parts = [f"only in train: {', '.join(only_train[:5])}" if only_train else "",
                 f"only in val: {', '.join(only_val[:5])}" if only_val else ""]
        raise UsageError(f"dataset {name}: class folders differ between train and val "
                         f"({'; '.join(p for p in parts if p)})")
    for lst in (train, val):
        counts = np.bincount([label for _, label in lst.samples], minlength=len(lst.classes))
        empty = [c for c, n in zip(lst.classes, counts) if n == 0]
        if empty:
            raise UsageError(f"dataset {name}: class {empty[0]} has no image in {lst.where}/"
                             + (f" (nor {len(empty) - 1} more classes)" if len(empty) > 1 else "")
                             + "; every class needs images in train and val")
    from concurrent.futures import ThreadPoolExecutor

    for lst in (train, val):
        marker = cache_dir() / "verified" / f"{listing_key(lst, 'decoded', MIN_IMAGE_SIDE)}.ok"
        if marker.exists():
            continue
        paths = [path for path, _ in lst.samples]
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            for path, problem in zip(paths, pool.map(_verify_image, paths, chunksize=64)):
                if problem:
                    raise UsageError(f"dataset {name}: {path} {problem}")
        _write_cache(marker, b"")


def listing_key(lst: ImageList, *extra: Any) -> str:
    """A digest of the files (path, size, modification time) and `extra`: a changed file changes it."""
    h = hashlib.sha256(repr(extra).encode())
    for path, label in lst.samples:
        st = os.stat(path)
        h.update(f"{path}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def _write_cache(path: Path, data: bytes) -> None:
    """Best effort: a cache that cannot be written only costs time."""
    from bench import runs

    try:
        runs.atomic_write(path, lambda f: f.write(data), binary=True)
    except (OSError, UsageError):  # UsageError: a refused write, named as a StorageError
        pass


def _decode(path: str, size: int) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale when much larger
            rgb = img.convert("RGB")
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as err:
        raise UsageError(f"{path} is not a readable image ({err})") from None


def decode_image_list(lst: ImageList, size: int) -> TensorSplit:
    """Every image of `lst` decoded, converted to RGB and resized to size x size, as a uint8 split; cached
    (safetensors) by the listing, so each run after the first reads one file."""
    from concurrent.futures import ThreadPoolExecutor

    from safetensors.torch import load_file, save

    path = cache_dir() / "decoded" / f"{listing_key(lst, size)}.safetensors"
    if path.is_file():
        try:
            cached = load_file(str(path))
            return TensorSplit(cached["images"], cached["labels"])
        except Exception:  # a damaged cache file is rebuilt
            pass
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        arrays = list(pool.map(lambda s: _decode(s[0], size), lst.samples, chunksize=64))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([label for _, label in lst.samples], dtype=torch.long)
    _write_cache(path, save({"images": images, "labels": labels}))
    return TensorSplit(images, labels)


def resident_bytes(count: int, size: int, pad: int) -> int:
    """Device memory of a split held whole by TensorTrainLoader (zero-padded float32 NHWC store)."""
    return count * (size + 2 * pad) ** 2 * 3 * 4


def _load_listed(scan: Callable[[bool], ImageList], size: int, pad: int, data_cfg, train: bool):
    """A listed dataset's split: held whole when it fits `data.resident_gb`, else streamed."""
    lst = scan(train)
    if resident_bytes(len(lst.samples), size, pad) <= float(data_cfg.resident_gb) * 1e9:
        return decode_image_list(lst, size)
    return lst


def load_tinyimagenet(root: Path, name: str, data_cfg, train: bool, size: int, pad: int = 8):
    return _load_listed(lambda t: scan("tinyimagenet", str(root), name, t), size, pad, data_cfg, train)


def _first_image_size(lst: ImageList) -> int:
    from PIL import Image

    try:
        with Image.open(lst.samples[0][0]) as img:
            return int(img.size[1])
    except (OSError, ValueError, SyntaxError) as err:
        raise UsageError(f"{lst.samples[0][0]} is not a readable image ({err})") from None


def source_spec(name: str, source, data_cfg) -> DatasetSpec:
    """The spec of a dataset named on the command line (`NAME=imagefolder:ROOT`, `NAME=tinyimagenet:ROOT`).
    Its image size is `data.image_size`, else its own `image_size`, else the height of its first training
    image."""
    root = Path(source.root)
    train = scan(source.kind, source.root, name, True)
    size = int(data_cfg.image_size or 0) or int(source.image_size or 0) or _first_image_size(train)
    pad = source.pad if source.pad >= 0 else size // 8
    mean = tuple(source.mean) if source.mean else None
    std = tuple(source.std) if source.std else None
    return DatasetSpec(name, len(train.classes), size, mean, std, pad=pad, flip=source.flip,
                       load=lambda cfg, is_train: _load_listed(lambda t: scan(source.kind, source.root, name, t), size,
                                                               pad, cfg, is_train),
                       description=f"{source.kind} at {root}", stats_key=f"{source.kind}:{root}")


def dataset_spec(name: str, data_cfg, source=None) -> DatasetSpec:
    """The dataset a run trains on: registered (or from `source`), at `data.image_size` when set (the crop
    padding scaled with it, e.g. CIFAR's 4 at 32 -> 8 at 64)."""
    if source is not None:
        return source_spec(name, source, data_cfg)
    spec = DATASETS.get(name)
    size = int(data_cfg.image_size or 0)
    if size and size != spec.image_size:
        spec = dataclasses.replace(spec, image_size=size, pad=round(spec.pad * size / spec.image_size))
    return spec


def run_dataset(cfg) -> DatasetSpec:
    """`dataset_spec` of a RunConfig."""
    return dataset_spec(cfg.dataset, cfg.data, getattr(cfg, "dataset_source", None))


def check_dataset(spec: DatasetSpec, data_cfg, source=None) -> None:
    """Before any run: the dataset's files are there and readable (one clear line otherwise)."""
    if source is None:
        spec.load(data_cfg, False)
        return
    check_image_lists(scan(source.kind, source.root, spec.name, True), scan(source.kind, source.root, spec.name, False),
                      spec.name)


def with_statistics(spec: DatasetSpec, data_cfg, train_split: Any = None) -> DatasetSpec:
    """`spec` with mean/std filled: given ones as they are, else computed once from the training split (per
    channel over every pixel, scaled to 0..1) and cached by what identifies the data. `train_split`: what
    `spec.load(data_cfg, True)` returned, when the caller has it already."""
    if spec.mean is not None and spec.std is not None:
        return spec
    key = hashlib.sha256(f"{spec.name}|{spec.stats_key or Path(data_cfg.root).expanduser().resolve()}".encode())
    source = spec.load(data_cfg, True) if train_split is None else train_split
    if isinstance(source, ImageList):
        key.update(listing_key(source).encode())
    elif isinstance(source, TensorSplit):
        key.update(f"{tuple(source.images.shape)}".encode())
    path = cache_dir() / "stats" / f"{key.hexdigest()[:32]}.json"
    try:
        stats = json.loads(path.read_text())
        mean, std = tuple(map(float, stats["mean"])), tuple(map(float, stats["std"]))
    except (OSError, ValueError, KeyError, TypeError):
        mean, std = channel_statistics(source, min(spec.image_size, 64))
        _write_cache(path, json.dumps({"dataset": spec.name, "mean": mean, "std": std}).encode())
    return dataclasses.replace(spec, mean=mean, std=std)


def channel_statistics(source: TensorSplit | ImageList | Path, size: int) -> tuple[tuple[float, ...], ...]:
    """Per-channel mean and standard deviation (0..1 scale) of a training split."""
    total = np.zeros(3)
    squares = np.zeros(3)
    count = 0
    if isinstance(source, Path):
        from torchvision.datasets import ImageFolder

        source = ImageList([(p, c) for p, c in ImageFolder(str(source)).samples], [], str(source))
    chunks: Iterator[np.ndarray]
    if isinstance(source, TensorSplit):
        chunks = (source.images[i:i + 4096].numpy() for i in range(0, len(source.images), 4096))
    else:
        chunks = (_decode(p, size).transpose(2, 0, 1)[None] for p, _ in source.samples)
    for chunk in chunks:
        x = chunk.astype(np.float64) / 255.0
        total += x.sum(axis=(0, 2, 3))
        squares += (x ** 2).sum(axis=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean ** 2, 1e-12))
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


def resize_split(split: TensorSplit, size: int) -> TensorSplit:
    """uint8 images resized once to size x size (bilinear, antialiased when shrinking)."""
    if split.images.shape[-1] == size and split.images.shape[-2] == size:
        return split
    out = []
    for i in range(0, len(split.images), 2048):
        x = F.interpolate(split.images[i:i + 2048].float(), size=(size, size), mode="bilinear", align_corners=False,
                          antialias=True)
        out.append(x.round_().clamp_(0, 255).to(torch.uint8))
    return TensorSplit(torch.cat(out), split.labels)


# ---------------------------------------------------------------------------------------------
# device-resident loader for tensor datasets


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator whose stream depends only on (seed, epoch): exact replay after a resume, and the same
    permutation, crops and flips whatever device the batches are made on (draws are moved there, a few bytes
    per image)."""
    gen = torch.Generator()
    gen.manual_seed((int(seed) * 1_000_003 + int(epoch) * 7_919 + 17) % (2**63))
    return gen


def crop_flip_nhwc(padded: Tensor, index: Tensor, size: tuple[int, int], pad: int, flip: bool,
                   gen: torch.Generator) -> Tensor:
    """Batched RandomCrop(size, padding=pad) then RandomHorizontalFlip of images `index` of a zero-padded
    NHWC store [N, H+2p, W+2p, C] (any dtype): one index_select of pixels, whose crop offsets shift the row
    and column grids and whose flip reverses the columns. Returns [B, H, W, C]."""
    b, (h, w) = len(index), size
    dev = padded.device
    hp, wp, c = padded.shape[1:]
    draw = gen.device
    off_y = torch.randint(0, 2 * pad + 1, (b,), device=draw, generator=gen).to(dev, non_blocking=True)
    off_x = torch.randint(0, 2 * pad + 1, (b,), device=draw, generator=gen).to(dev, non_blocking=True)
    rows = off_y[:, None] + torch.arange(h, device=dev)
    cols = off_x[:, None] + torch.arange(w, device=dev)
    if flip:
        flipped = (torch.rand(b, device=draw, generator=gen) < 0.5).to(dev, non_blocking=True)
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    pixel = (index[:, None, None] * hp + rows[:, :, None]) * wp + cols[:, None, :]  # [B, H, W]
    return padded.view(-1, c).index_select(0, pixel.view(-1)).view(b, h, w, c)


def pad_nhwc(images: Tensor, pad: int) -> Tensor:
    """uint8 NCHW -> zero-padded NHWC store for `crop_flip_nhwc`."""
    return F.pad(images, (pad, pad, pad, pad)).permute(0, 2, 3, 1).contiguous()


def crop_flip(images: Tensor, pad: int, flip: bool, gen: torch.Generator) -> Tensor:
    """RandomCrop(size, padding=pad) (zero fill) then RandomHorizontalFlip, batched, on uint8 [B,C,H,W]."""
    b, _, h, w = images.shape
    out = crop_flip_nhwc(pad_nhwc(images, pad), torch.arange(b, device=images.device), (h, w), pad, flip, gen)
    return out.permute(0, 3, 1, 2)


class Normalize:
    """uint8 images -> float, (x/255 - mean) / std; NHWC input comes out as NCHW with channels_last strides
    (no copy), or contiguous NCHW when `channels_last` is off."""

    def __init__(self, mean, std, device: torch.device, channels_last: bool) -> None:
        self.scale = 1.0 / (255.0 * torch.tensor(std, device=device))
        self.shift = torch.tensor(mean, device=device) / torch.tensor(std, device=device)
        self.channels_last = channels_last

    def nhwc(self, images: Tensor) -> Tensor:
        """uint8 NHWC -> normalised float32 NHWC."""
        return images.float().mul_(self.scale).sub_(self.shift)

    def layout(self, x: Tensor) -> Tensor:
        """float NHWC -> NCHW in the configured memory format."""
        x = x.permute(0, 3, 1, 2)
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    def __call__(self, images: Tensor) -> Tensor:
        """uint8 NCHW -> normalised float NCHW."""
        return self.layout(self.nhwc(images.permute(0, 2, 3, 1)))


class TensorTrainLoader:
    """Shuffled, augmented batches of a split held on `device`, `views` augmentations per image.

    With `world` > 1 processes, every rank draws the same permutation and takes its own 1/world of it
    (`batch_size` stays the global batch), with its own augmentation stream."""

    def __init__(self, split: TensorSplit, spec: DatasetSpec, batch_size: int, views: int, seed: int,
                 device: torch.device, channels_last: bool, rank: int = 0, world: int = 1) -> None:
        self.normalize = Normalize(spec.mean, spec.std, device, channels_last)
        # the split, zero-padded and normalised once, float32 NHWC: a batch is then one gather of pixels
        # (4x the memory of uint8: 0.96 GB for CIFAR's 50,000 training images)
        self.store = self.normalize.nhwc(pad_nhwc(split.images.to(device), spec.pad))
        self.size = tuple(split.images.shape[2:])
        self.labels = split.labels.to(device)
        self.spec, self.views, self.seed, self.device = spec, views, seed, device
        self.rank, self.world = rank, world
        self.batch_size = max(1, batch_size // world)

    @property
    def num_samples(self) -> int:
        """Samples per epoch on this rank."""
        return len(self.labels) // self.world

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def epoch(self, epoch: int) -> Iterator[tuple[list[Tensor], Tensor]]:
        gen = epoch_generator(self.seed, epoch)
        order = torch.randperm(len(self.labels), generator=gen).to(self.device)
        if self.world > 1:
            order = order[self.rank::self.world][: self.num_samples]
            gen = epoch_generator(self.seed + 104_729 * (self.rank + 1), epoch)
        for start in range(0, self.num_samples, self.batch_size):
            idx = order[start:start + self.batch_size]
            many = idx.repeat(self.views) if self.views > 1 else idx
            crops = crop_flip_nhwc(self.store, many, self.size, self.spec.pad, self.spec.flip, gen)
            yield list(self.normalize.layout(crops).chunk(self.views)), self.labels[idx]


class TensorEvalLoader:
    """The test split in order; with `world` > 1, this rank's share (rank, rank + world, ...)."""

    def __init__(self, split: TensorSplit, spec: DatasetSpec, batch_size: int, device: torch.device,
                 channels_last: bool, rank: int = 0, world: int = 1) -> None:
        self.images = split.images[rank::world].to(device)
        self.labels = split.labels[rank::world].to(device)
        self.batch_size = batch_size
        self.normalize = Normalize(spec.mean, spec.std, device, channels_last)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, len(self.labels), self.batch_size):
            yield (self.normalize(self.images[start:start + self.batch_size]),
                   self.labels[start:start + self.batch_size])


# ---------------------------------------------------------------------------------------------
# ImageFolder loader (ImageNet)


class MultiView:
    """A torchvision transform applied `views` times independently: PCL's multiple augmentation."""

    def __init__(self, transform: Callable, views: int) -> None:
        self.transform, self.views = transform, views

    def __call__(self, img):
        return [self.transform(img) for _ in range(self.views)]


class ListedImages(torch.utils.data.Dataset):
    """An ImageList as a torch Dataset: (transform(RGB image), label)."""

    def __init__(self, images: ImageList, transform: Callable) -> None:
        self.samples, self.classes, self.transform = images.samples, images.classes, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from PIL import Image

        path, label = self.samples[i]
        with Image.open(path) as img:
            return self.transform(img.convert("RGB")), label


def _folder_dataset(source: Path | ImageList, spec: DatasetSpec, transform: Callable):
    from torchvision import datasets

    if isinstance(source, ImageList):
        return ListedImages(source, transform)
    dataset = datasets.ImageFolder(str(source), transform=transform)
    _check_classes(dataset, spec)
    return dataset


class FolderTrainLoader:
    def __init__(self, root: Path | ImageList, spec: DatasetSpec, data_cfg, views: int, seed: int,
                 device: torch.device, channels_last: bool, rank: int = 0, world: int = 1) -> None:
        from torchvision import transforms

        size = spec.image_size
        crop = ([transforms.RandomResizedCrop(size)] if spec.resized_crop else
                [transforms.Resize((size, size)), transforms.RandomCrop(size, padding=spec.pad)])
        tf = transforms.Compose([*crop, *([transforms.RandomHorizontalFlip()] if spec.flip else []),
                                 transforms.ToTensor(), transforms.Normalize(spec.mean, spec.std)])
        self.dataset = _folder_dataset(root, spec, MultiView(tf, views))
        self.seed, self.device = seed, device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        workers = data_cfg.workers
        self.sampler = torch.utils.data.DistributedSampler(self.dataset, num_replicas=world, rank=rank, shuffle=True,
                                                           seed=seed, drop_last=True)
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=max(1, data_cfg.batch_size // world), sampler=self.sampler,
            num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
            drop_last=False,
        )

    @property
    def num_samples(self) -> int:
        return len(self.sampler)

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int) -> Iterator[tuple[list[Tensor], Tensor]]:
        self.sampler.set_epoch(epoch)  # the order depends on (seed, epoch) only
        for views, target in self.loader:
            yield ([v.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
                    for v in views], target.to(self.device, non_blocking=True))


class FolderEvalLoader:
    def __init__(self, root: Path | ImageList, spec: DatasetSpec, data_cfg, device: torch.device,
                 channels_last: bool, rank: int = 0, world: int = 1) -> None:
        from torchvision import transforms

        size = spec.image_size
        resize = ([transforms.Resize(int(round(size / 0.875))), transforms.CenterCrop(size)] if spec.resized_crop
                  else [transforms.Resize((size, size))])
        tf = transforms.Compose([*resize, transforms.ToTensor(), transforms.Normalize(spec.mean, spec.std)])
        self.dataset = _folder_dataset(root, spec, tf)
        self.device = device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        shard = torch.utils.data.Subset(self.dataset, range(rank, len(self.dataset), world))
        self.loader = torch.utils.data.DataLoader(shard, batch_size=data_cfg.eval_batch_size,
                                                  num_workers=data_cfg.workers, pin_memory=device.type == "cuda")

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for x, y in self.loader:
            yield x.to(self.device).contiguous(memory_format=self.memory_format), y.to(self.device)


def _check_classes(dataset, spec: DatasetSpec) -> None:
    if len(dataset.classes) > spec.num_classes:
        raise UsageError(f"{spec.name}: found {len(dataset.classes)} class folders, expected at most "
                         f"{spec.num_classes}")


def eval_transform(spec: DatasetSpec) -> dict[str, Any]:
    """How the test split's images reach the network, as timm's `pretrained_cfg` fields, so that
    `timm.data.create_transform(**timm.data.resolve_data_config(pretrained_cfg=...))` on the original image files
    gives what the run evaluated: image folders are resized once to the square size, bilinear (PIL, antialiased);
    ImageNet-style data is resized to size / 0.875 and centre-cropped."""
    return {"input_size": [3, spec.image_size, spec.image_size], "interpolation": "bilinear",
            "crop_pct": 0.875 if spec.resized_crop else 1.0, "crop_mode": "center" if spec.resized_crop else "squash",
            "mean": list(spec.mean or ()), "std": list(spec.std or ()), "num_classes": spec.num_classes}


def build_eval_loader(spec: DatasetSpec | str, data_cfg, device: torch.device, channels_last: bool, rank: int = 0,
                      world: int = 1):
    """The test split of a dataset (a `dataset_spec`, or a registered name), in order; sharded over `world`
    ranks."""
    spec = with_statistics(dataset_spec(spec, data_cfg) if isinstance(spec, str) else spec, data_cfg)
    test_src = spec.load(data_cfg, False)
    if isinstance(test_src, TensorSplit):
        test_src = resize_split(test_src, spec.image_size)
        return TensorEvalLoader(test_src, spec, data_cfg.eval_batch_size, device, channels_last, rank, world)
    return FolderEvalLoader(test_src, spec, data_cfg, device, channels_last, rank, world)


def build_loaders(spec: DatasetSpec | str, data_cfg, views: int, seed: int, device: torch.device, channels_last: bool,
                  rank: int = 0, world: int = 1):
    """(train loader, eval loader, spec with its mean/std) of a dataset (a `dataset_spec`); sharded over
    `world` ranks."""
    spec = dataset_spec(spec, data_cfg) if isinstance(spec, str) else spec
    train_src = spec.load(data_cfg, True)
    spec = with_statistics(spec, data_cfg, train_src)
    if isinstance(train_src, TensorSplit):
        train_src = resize_split(train_src, spec.image_size)
        train = TensorTrainLoader(train_src, spec, data_cfg.batch_size, views, seed, device, channels_last, rank,
                                  world)
    else:
        train = FolderTrainLoader(train_src, spec, data_cfg, views, seed, device, channels_last, rank, world)
    return train, build_eval_loader(spec, data_cfg, device, channels_last, rank, world), spec
