"""Image folders and Tiny-ImageNet: listing, checking every file once, decoding into a cached uint8 split
(safetensors, keyed by the listing), and the choice between holding a split whole and streaming it."""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.data.spec import ImageList, TensorSplit, cache_dir, write_cache
from bench.errors import UsageError


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
        write_cache(marker, b"")


def listing_key(lst: ImageList, *extra: Any) -> str:
    """A digest of the files (path, size, modification time) and `extra`: a changed file changes it."""
    h = hashlib.sha256(repr(extra).encode())
    for path, label in lst.samples:
        st = os.stat(path)
        h.update(f"{path}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]



def decode_image(path: str, size: int) -> np.ndarray:
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
        arrays = list(pool.map(lambda s: decode_image(s[0], size), lst.samples, chunksize=64))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([label for _, label in lst.samples], dtype=torch.long)
    write_cache(path, save({"images": images, "labels": labels}))
    return TensorSplit(images, labels)


def resident_bytes(count: int, size: int, pad: int) -> int:
    """Device memory of a split held whole by TensorTrainLoader (zero-padded float32 NHWC store)."""
    return count * (size + 2 * pad) ** 2 * 3 * 4


def load_listed(scan: Callable[[bool], ImageList], size: int, pad: int, data_cfg, train: bool):
    """A listed dataset's split: held whole when it fits `data.resident_gb`, else streamed."""
    lst = scan(train)
    if resident_bytes(len(lst.samples), size, pad) <= float(data_cfg.resident_gb) * 1e9:
        return decode_image_list(lst, size)
    return lst


def load_tinyimagenet(root: Path, name: str, data_cfg, train: bool, size: int, pad: int = 8):
    return load_listed(lambda t: scan("tinyimagenet", str(root), name, t), size, pad, data_cfg, train)


def first_image_size(lst: ImageList) -> int:
    from PIL import Image

    try:
        with Image.open(lst.samples[0][0]) as img:
            return int(img.size[1])
    except (OSError, ValueError, SyntaxError) as err:
        raise UsageError(f"{lst.samples[0][0]} is not a readable image ({err})") from None
