"""A training data stream fixed by ``DATALOADER.SEED``, whatever ``SEED``: the same images in the
same order with the same augmentations in every run, so that runs of different seeds differ only in
the model's own randomness (its initialisation, the RPN's and ROI heads' sampling). Comparing recipes
on one stream removes the data order's share of the seed-to-seed spread (common random numbers)."""

import numpy as np
import torch

from detectron2.data import build_detection_train_loader
from detectron2.data.build import _train_loader_from_config
from detectron2.data.samplers import TrainingSampler
from detectron2.utils import comm

__all__ = ["SeededMapper", "build_fixed_train_loader"]


class SeededMapper:
    """``mapper`` with its augmentations drawn from a NumPy generator of its own, seeded from ``seed``,
    the process's rank and the data loader worker that maps. detectron2's augmentations draw from NumPy's global
    generator, which each worker seeds from ``SEED``; the global state is put back after each call,
    so nothing else that draws from it (in the main process when there are no workers) is moved."""

    def __init__(self, mapper, seed: int):
        self.mapper = mapper
        self.seed = seed
        self._state = None  # made in the process that maps: each worker gets its own copy

    def __call__(self, dataset_dict):
        if self._state is None:
            worker = torch.utils.data.get_worker_info()
            entropy = [self.seed, comm.get_rank(), worker.id if worker else 0]
            self._state = np.random.RandomState(np.random.SeedSequence(entropy).generate_state(1)[0]).get_state()
        outer = np.random.get_state()
        np.random.set_state(self._state)
        try:
            return self.mapper(dataset_dict)
        finally:
            self._state = np.random.get_state()
            np.random.set_state(outer)


def build_fixed_train_loader(cfg):
    """detectron2's training loader for ``cfg``, its sampler's shuffle and its augmentations seeded by
    ``cfg.DATALOADER.SEED`` instead of ``cfg.SEED``."""
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        raise ValueError(
            f"DATALOADER.SEED fixes the order of detectron2's TrainingSampler, but DATALOADER.SAMPLER_TRAIN is "
            f"{cfg.DATALOADER.SAMPLER_TRAIN}: set DATALOADER.SEED -1, or DATALOADER.SAMPLER_TRAIN TrainingSampler."
        )
    loader_args = _train_loader_from_config(cfg)
    loader_args["sampler"] = TrainingSampler(len(loader_args["dataset"]), seed=cfg.DATALOADER.SEED)
    loader_args["mapper"] = SeededMapper(loader_args["mapper"], cfg.DATALOADER.SEED)
    return build_detection_train_loader(**loader_args)
