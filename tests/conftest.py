"""Shared test set-up: tests marked `fashion` skip, with the reason, when the Debian data is missing."""

import pytest
import torch

from lossfloor.data.dataset import FASHION_DIR

FASHION_FILES = [FASHION_DIR / f"{split}-{kind}-ubyte.gz" for split in ("train", "t10k")
                 for kind in ("images-idx3", "labels-idx1")]


def pytest_collection_modifyitems(config, items):
    missing = [p for p in FASHION_FILES if not p.is_file()]
    if not missing:
        return
    skip = pytest.mark.skip(reason=f"Fashion-MNIST is not installed ({missing[0]} is missing); run "
                                   "`sudo apt-get update && sudo apt-get install dataset-fashion-mnist`")
    for item in items:
        if "fashion" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: tiny models run fastest so, do not spin-wait on a shared 2-core machine, and a
    killed subprocess with one thread does the same arithmetic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """The path of a real 3-step checkpoint of a tiny MLP on 2-D points."""
    from lossfloor.nets.networks import ModelConfig
    from lossfloor.train.trainer import TrainConfig, train

    out = tmp_path_factory.mktemp("run")
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    train(x, "edm", ModelConfig("mlp", (2,), 16, 1), TrainConfig(steps=3, batch_size=8, log_every=1),
          out=out, progress=False)
    return out / "checkpoint.pt"
