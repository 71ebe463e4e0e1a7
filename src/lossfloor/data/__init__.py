"""Datasets as rows scaled to [-1, 1]: the built-in image sets and 2-D toys, .npy/.npz files, image
folders, and rows read from disk (out of core)."""

from lossfloor.data.dataset import Dataset, NoTestSplit
from lossfloor.data.load import BUILTIN, load_dataset
from lossfloor.data.rows import load_rows_dataset, open_rows

__all__ = ["BUILTIN", "Dataset", "NoTestSplit", "load_dataset", "load_rows_dataset", "open_rows"]
