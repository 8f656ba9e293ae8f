"""Augmentation of batches held on the training device: the epoch's random stream, RandomCrop with zero padding and
RandomHorizontalFlip as one gather of pixels, and normalisation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator whose stream depends only on (seed, epoch): exact replay after a resume, and the same
    permutation, crops and flips whatever device the batches are made on (draws are moved there, a few bytes
    per image)."""
    gen = torch.Generator()
    gen.manual_seed((int(seed) * 1_000_003 + int(epoch) * 7_919 + 17) % (2**63))
    return gen


def crop_flip_nhwc(padded: Tensor, index: Tensor, size: tuple[int, int], pad: int, flip: bool,
                   gen: torch.Generator, crop: bool = True) -> Tensor:
    """Batched RandomCrop(size, padding=pad) then RandomHorizontalFlip of images `index` of a zero-padded
    NHWC store [N, H+2p, W+2p, C] (any dtype): one index_select of pixels, whose crop offsets shift the row
    and column grids and whose flip reverses the columns. `crop` False: the centre (the image itself), no draw.
    Returns [B, H, W, C]."""
    b, (h, w) = len(index), size
    dev = padded.device
    hp, wp, c = padded.shape[1:]
    draw = gen.device
    if crop:
        off_y = torch.randint(0, 2 * pad + 1, (b,), device=draw, generator=gen).to(dev, non_blocking=True)
        off_x = torch.randint(0, 2 * pad + 1, (b,), device=draw, generator=gen).to(dev, non_blocking=True)
    else:
        off_y = off_x = torch.full((b,), pad, device=dev, dtype=torch.long)
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
        self.mean = torch.tensor(mean, device=device, dtype=torch.float32)
        self.std = torch.tensor(std, device=device, dtype=torch.float32)
        self.scale = 1.0 / (255.0 * self.std)
        self.shift = self.mean / self.std
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
