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

The package: `spec` (what a dataset is, the registry, the cache), `folders` (image folders, checks, decoding),
`sources` (the built-in datasets, specs at a size, statistics), `augment` (on-device augmentation and the per-view
recipes), `samplers` (the order of an epoch's images), `loaders` (the training and test loaders).
"""

from bench.data.augment import *  # noqa: F401,F403
from bench.data.folders import *  # noqa: F401,F403
from bench.data.loaders import *  # noqa: F401,F403
from bench.data.recipes import *  # noqa: F401,F403
from bench.data.samplers import *  # noqa: F401,F403
from bench.data.sources import *  # noqa: F401,F403
from bench.data.spec import *  # noqa: F401,F403
