"""Per-view augmentation recipes: what each augmented view of a training image goes through.

A recipe is named ops joined by `+`, e.g. `crop+flip` (the default: the common protocol's RandomCrop with zero padding
and RandomHorizontalFlip), `crop+flip+rotate` or `crop+randaugment`. Ops and their arguments (`op:ARG`):

- `crop`: the dataset's random crop (zero padding `pad`; RandomResizedCrop for ImageNet-style data);
- `flip`: horizontal flip, where the dataset's protocol flips (not digits, not SVHN);
- `rotate[:D]`: a random rotation in [-D, D] degrees (default 15), nearest, black fill (OKDPH's student 1);
- `cutout[:L]`: one L x L square, centred anywhere and clipped to the image, set to black (DeVries & Taylor, 2017;
  default half the image side, 16 at 32 px; OKDPH's student 2: its code cuts before normalising, hence black; the
  original code cut after, to the mean colour);
- `randaugment[:N:M]`: RandAugment (Cubuk et al., 2020), N ops at magnitude M of 31 bins (default 2 and 9, as
  torchvision), the 14 ops of torchvision's RandAugment (OKDPH's hybrid-weight model).

Crop and flip happen first (one gather of pixels), the other ops in the order written. On a split held on the device
every op runs there, batched, drawing from the epoch's generator (a resumed epoch sees the same views); streamed data
uses the torchvision transforms of the same names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.errors import UsageError, unknown

OPS = ("crop", "flip", "rotate", "cutout", "randaugment")
DEFAULT_RECIPE = "crop+flip"
RANDAUGMENT_OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
                   "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")
MAGNITUDE_BINS = 31  # torchvision's RandAugment default


@dataclass(frozen=True)
class Recipe:
    """One view's augmentation; `extras`: (op, argument) after crop and flip, in order (argument 0: the default)."""

    text: str
    crop: bool
    flip: bool
    extras: tuple[tuple[str, tuple[int, ...]], ...] = ()


ARGUMENTS = {"rotate": ("D", "degrees"), "cutout": ("L", "the side of the square in pixels"),
             "randaugment": ("N:M", "ops per image and their magnitude")}


def parse_recipe(text: str, where: str = "data.view_augment", image_size: int = 0) -> Recipe:
    """`crop+flip+rotate:15` -> Recipe; an unknown op or a bad argument is one UsageError with a close match.
    `image_size` (the side of the run's images; 0: unknown) bounds the size arguments (a cutout no larger than the
    image)."""
    text = str(text).strip()
    crop = flip = False
    extras: list[tuple[str, tuple[int, ...]]] = []
    for part in text.split("+"):
        name, *args = part.strip().split(":")
        if name not in OPS:
            raise UsageError(f"{where} '{text}': {unknown('augmentation op', name, OPS)}")
        if name in ("crop", "flip") and args:
            raise UsageError(f"{where} '{text}': {name} takes no argument")
        try:
            values = tuple(int(a) for a in args)
        except ValueError:
            raise UsageError(f"{where} '{text}': {part} takes whole numbers ({name}:N)") from None
        if name in ARGUMENTS and len(values) > len(ARGUMENTS[name][0].split(":")):
            form, meaning = ARGUMENTS[name]
            raise UsageError(f"{where} '{text}': {part} gives {len(values)} numbers; {name} takes "
                             f"{'one' if form.count(':') == 0 else 'at most two'} ({name}:{form}, {meaning})")
        if any(v < 0 for v in values):
            raise UsageError(f"{where} '{text}': {part}: {name}'s numbers are not negative")
        if name == "randaugment" and len(values) == 2 and values[1] >= MAGNITUDE_BINS:
            raise UsageError(f"{where} '{text}': the RandAugment magnitude is 0..{MAGNITUDE_BINS - 1}")
        if name == "rotate" and values and values[0] > 180:
            raise UsageError(f"{where} '{text}': rotate takes at most 180 degrees, got {values[0]}")
        if name == "cutout" and values and (values[0] < 1 or (image_size and values[0] > image_size)):
            bound = f"from 1 to the image side ({image_size} px)" if image_size else "at least 1"
            raise UsageError(f"{where} '{text}': the cutout side must be {bound}, got {values[0]}")
        if name == "crop":
            crop = True
        elif name == "flip":
            flip = True
        else:
            extras.append((name, values))
    return Recipe(text, crop, flip, tuple(extras))


def view_recipes(texts: list[str] | None, views: int, where: str = "data.view_augment",
                 image_size: int = 0) -> list[Recipe]:
    """One recipe per view: none given -> the default for every view; one -> it for every view (independent draws);
    else exactly one per view. `image_size`: the run's image side, checked against the size arguments."""
    texts = list(texts or []) or [DEFAULT_RECIPE]
    if len(texts) not in (1, views):
        raise UsageError(f"{where} names {len(texts)} recipes for {views} views: give one (for every view) or one per "
                         "view")
    recipes = [parse_recipe(t, where, image_size) for t in texts]
    return recipes * views if len(recipes) == 1 else recipes


# ---------------------------------------------------------------------------------------------
# on the device, batched (NCHW float, normalised)


def rotate(x: Tensor, degrees: Tensor, fill: Tensor) -> Tensor:
    """Each image rotated counter-clockwise by its angle about its centre (nearest, `fill` where nothing maps), as
    torchvision's rotate."""
    b, _, h, w = x.shape
    a = degrees.to(x.device, torch.float32) * (math.pi / 180.0)
    cos, sin = torch.cos(a), torch.sin(a)
    # output pixel -> input pixel, in normalised coordinates (y down): the inverse rotation, aspect-corrected
    theta = torch.stack([torch.stack([cos, -sin * h / w, torch.zeros_like(a)], 1),
                         torch.stack([sin * w / h, cos, torch.zeros_like(a)], 1)], 1)
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
    shifted = x - fill.view(1, -1, 1, 1)
    out = F.grid_sample(shifted.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return (out + fill.view(1, -1, 1, 1)).to(x.dtype)


def cutout(x: Tensor, length: int, centre_y: Tensor, centre_x: Tensor, fill: Tensor | float = 0.0) -> Tensor:
    """Cutout: the square [cy - L/2, cy + L/2) x [cx - L/2, cx + L/2), clipped to the image, set to `fill` (a value,
    or one per channel)."""
    _, _, h, w = x.shape
    ys = torch.arange(h, device=x.device)
    xs = torch.arange(w, device=x.device)
    cy, cx = centre_y.to(x.device)[:, None], centre_x.to(x.device)[:, None]
    in_y = (ys >= cy - length // 2) & (ys < cy + length - length // 2)
    in_x = (xs >= cx - length // 2) & (xs < cx + length - length // 2)
    mask = (in_y[:, :, None] & in_x[:, None, :])[:, None]
    if isinstance(fill, Tensor):
        return torch.where(mask, fill.to(x.device, x.dtype).view(1, -1, 1, 1), x)
    return x.masked_fill(mask, fill)


def _randaugment_op(x01: Tensor, op: str, magnitude: float, signed: bool) -> Tensor:
    """One RandAugment op on [0, 1] images (torchvision's magnitudes at bin `magnitude` of 31)."""
    import torchvision.transforms.v2.functional as TF

    m = magnitude / (MAGNITUDE_BINS - 1)
    s = -1.0 if signed else 1.0
    h, w = x01.shape[-2:]
    if op == "identity":
        return x01
    if op in ("shear_x", "shear_y"):
        shear = math.degrees(math.atan(s * 0.3 * m))
        return TF.affine(x01, angle=0.0, translate=[0, 0], scale=1.0, center=[0, 0],
                         shear=[shear, 0.0] if op == "shear_x" else [0.0, shear])
    if op in ("translate_x", "translate_y"):
        shift = int(s * 150.0 / 331.0 * (w if op == "translate_x" else h) * m)
        return TF.affine(x01, angle=0.0, translate=[shift, 0] if op == "translate_x" else [0, shift], scale=1.0,
                         shear=[0.0, 0.0])
    if op == "rotate":
        return TF.rotate(x01, s * 30.0 * m)
    if op in ("brightness", "color", "contrast", "sharpness"):
        factor = 1.0 + s * 0.9 * m
        adjust = {"brightness": TF.adjust_brightness, "color": TF.adjust_saturation,
                  "contrast": TF.adjust_contrast, "sharpness": TF.adjust_sharpness}[op]
        return adjust(x01, factor)
    if op == "posterize":
        return TF.posterize(x01, int(8 - round(magnitude / ((MAGNITUDE_BINS - 1) / 4))))
    if op == "solarize":
        return TF.solarize(x01, 1.0 - m)
    if op == "autocontrast":
        return TF.autocontrast(x01)
    return TF.equalize(x01)


SIGNED = {"shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color", "contrast", "sharpness"}


def randaugment(x: Tensor, ops: int, magnitude: int, mean: Tensor, std: Tensor, gen: torch.Generator) -> Tensor:
    """RandAugment on normalised images: per image `ops` ops drawn uniformly from the 14, each signed op negated with
    probability 1/2; images that drew the same (op, sign) are transformed together."""
    b = x.shape[0]
    choice = torch.randint(0, len(RANDAUGMENT_OPS), (ops, b), generator=gen)
    signed = torch.tensor([op in SIGNED for op in RANDAUGMENT_OPS])
    sign = torch.randint(0, 2, (ops, b), generator=gen).bool() & signed[choice]
    x01 = (x.float() * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)).clamp_(0.0, 1.0)
    for layer in range(ops):
        for k in choice[layer].unique().tolist():
            for negative in (False, True):
                rows = ((choice[layer] == k) & (sign[layer] == negative)).nonzero().flatten()
                if len(rows):
                    rows = rows.to(x.device)
                    x01[rows] = _randaugment_op(x01[rows], RANDAUGMENT_OPS[k], magnitude, negative)
    return ((x01 - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)).to(x.dtype)


def apply_extras(x: Tensor, recipe: Recipe, mean: Tensor, std: Tensor, gen: torch.Generator) -> Tensor:
    """The ops of `recipe` after crop and flip, on a normalised NCHW batch, drawing from `gen` (CPU)."""
    b, _, h, w = x.shape
    for op, args in recipe.extras:
        if op == "rotate":
            degrees = float(args[0]) if args else 15.0
            angles = (torch.rand(b, generator=gen) * 2.0 - 1.0) * degrees
            x = rotate(x, angles, (-mean / std).to(x.dtype))  # black, normalised
        elif op == "cutout":
            length = args[0] if args else max(1, h // 2)
            cy, cx = torch.randint(0, h, (b,), generator=gen), torch.randint(0, w, (b,), generator=gen)
            x = cutout(x, length, cy, cx, (-mean / std).to(x.dtype))  # black, normalised
        elif op == "randaugment":
            n, m = (list(args) + [2, 9][len(args):])[:2]
            x = randaugment(x, n, m, mean, std, gen)
    return x


# ---------------------------------------------------------------------------------------------
# streamed data (torchvision transforms on PIL images)


class Cutout:
    """Cutout on a CHW tensor in [0, 1], before normalising (a torchvision transform; torch's RNG of the loader
    worker): black."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __call__(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        cy, cx = torch.randint(0, h, (1,)), torch.randint(0, w, (1,))
        return cutout(x[None], self.length, cy, cx)[0]


def torchvision_transform(recipe: Recipe, spec, size: int):
    """The recipe as a torchvision transform of a PIL image (streamed image folders)."""
    from torchvision import transforms

    ops = []
    if spec.resized_crop:
        ops.append(transforms.RandomResizedCrop(size) if recipe.crop else transforms.Resize((size, size)))
    else:
        ops.append(transforms.Resize((size, size)))
        if recipe.crop:
            ops.append(transforms.RandomCrop(size, padding=spec.pad))
    if recipe.flip and spec.flip:
        ops.append(transforms.RandomHorizontalFlip())
    cut = []
    for op, args in recipe.extras:
        if op == "rotate":
            ops.append(transforms.RandomRotation(float(args[0]) if args else 15.0))
        elif op == "randaugment":
            n, m = (list(args) + [2, 9][len(args):])[:2]
            ops.append(transforms.RandAugment(num_ops=n, magnitude=m))
        elif op == "cutout":
            cut.append(Cutout(args[0] if args else max(1, size // 2)))
    return transforms.Compose([*ops, transforms.ToTensor(), *cut, transforms.Normalize(spec.mean, spec.std)])
