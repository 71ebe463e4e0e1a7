"""Datasets: the embedded digits, Fashion-MNIST, .npy/.npz arrays, image folders and 2-D toys.

Every loader returns a `Dataset` whose rows are float32 and finite.  Images are (N, C, H, W) in
[-1, 1] and the preprocessing that was applied is recorded in `Dataset.scaling`.  Splits:

- ``digits``: scikit-learn's 1,797 8x8 digits, a fixed permutation (numpy seed 0) split 80/20:
  1,438 train and 359 test images.
- ``fashion-mnist``: the 60,000 train and 10,000 t10k images of the IDX files.
- 2-D toys: ``train`` and ``test`` are independent draws (different seeds, no shared points), both
  standardised with the per-coordinate mean and std of the train draw.
- arrays: an .npz may hold a test split as ``x_test`` (and ``labels_test``); folders have no test split.
- latents: an .npz with ``mean`` and ``std`` (or ``logvar``) is a Gaussian mixture (data/latents.py).
"""

from __future__ import annotations

from pathlib import Path

from lossfloor.core.errors import InputError
from lossfloor.data.arrays import read_npy, read_npz, scaled_array
from lossfloor.data.dataset import SPLITS, Dataset, NoTestSplit, make_dataset, subsample, with_mirrors
from lossfloor.data.images import IMAGE_SETS, read_image_folder
from lossfloor.data.latents import is_latent_file, load_latents
from lossfloor.data.toys import TOY_SIZE, TOYS, load_toy

BUILTIN = (*IMAGE_SETS, *TOYS)  # the names --data takes besides paths (both registries)


def load_dataset(name: str = "digits", *, data_dir=None, split: str = "train", flip: bool = False,
                 n: int | None = None, seed: int = 0) -> Dataset:
    """A dataset by name or path, optionally subsampled to `n` points (seeded) and x-flipped.

    For the 2-D toys `n` is the number of points drawn (default TOY_SIZE = 10,000) and `seed` seeds the draw;
    for everything else `n` picks a random subset (numpy seed `seed`).  `flip` appends the horizontal
    mirror image of every (subsampled) image, doubling the dataset.
    """
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if n is not None and n < 1:
        raise InputError(f"the number of points must be positive, got {n}")
    if data_dir is not None and name != "fashion-mnist":
        raise InputError("--data-dir applies to fashion-mnist only")
    if name not in BUILTIN and is_latent_file(name):  # stochastic latents: a Gaussian mixture
        return load_latents(name, split, n=n, seed=seed, flip=flip)
    if name in TOYS:
        ds = load_toy(name, split, n if n is not None else TOY_SIZE, seed)
    else:
        if name in IMAGE_SETS:
            x, labels, scaling, source, classes = IMAGE_SETS[name](split, data_dir)
        else:
            x, labels, scaling, source, classes = _from_path(name, split)
        x, labels = subsample(x, labels, n, seed)
        ds = make_dataset(name, split, x, labels, scaling, source, classes)
    return with_mirrors(ds) if flip else ds


def _from_path(name, split):
    if not str(name).strip():
        raise InputError("--data: empty name; give a dataset name, a .npy/.npz file or a folder of images")
    path = Path(name)
    if not path.exists():
        raise FileNotFoundError(
            f"unknown dataset {name!r}: not one of {', '.join(BUILTIN)} and no such file or folder")
    if path.is_dir():
        if split != "train":
            raise NoTestSplit(f"{path}: an image folder has no test split")
        return read_image_folder(path)
    if path.suffix == ".npy":
        if split != "train":
            raise NoTestSplit(f"{path}: a .npy file has no test split (use an .npz with x_test)")
        x, scaling = scaled_array(read_npy(path), path)
        return x, None, scaling, str(path), []
    if path.suffix == ".npz":
        return read_npz(path, split)
    raise InputError(f"{path}: expected a .npy or .npz file or a folder of images")
