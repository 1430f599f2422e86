"""Dataset → fixed split → batches, as a Lightning DataModule."""

from __future__ import annotations

import io
from pathlib import Path

import lightning as L
import numpy as np
import torch

from ..config import Config
from ..data import extxyz, qm9, rmd17
from ..data.molecules import MoleculeSet
from ..data.resident import ResidentSet


def build_splits(cfg: Config, dataset: MoleculeSet | None = None) -> tuple[MoleculeSet, dict[str, np.ndarray]]:
    """The dataset with ``cfg.targets`` and the split indices (after subsetting), in split order."""
    if cfg.dataset == "rmd17":
        ds, split = rmd17.load_rmd17(cfg.molecule, cfg.split or "official-1", cfg.data_root, split_seed=cfg.split_seed)
    elif cfg.dataset == "extxyz":
        ds, split = extxyz.load_for_config(cfg)
    else:
        ds = dataset if dataset is not None else qm9.load_qm9(cfg.targets)
        if ds.target_names != list(cfg.targets):  # e.g. one 12-target dataset shared by per-target runs
            ds = ds.select_targets(cfg.targets)
        split = qm9.egnn_split(len(ds), cfg.split_seed)
    limits = {"train": cfg.subset_train, "val": cfg.subset_val, "test": cfg.subset_test}
    split = {k: (v[: limits[k]] if limits[k] else v) for k, v in split.items()}
    return ds, split


def element_references(cfg: Config, ds: MoleculeSet, train_idx) -> np.ndarray | None:
    """Per-element energy references (n_elements, n_targets) fitted on the training split when its molecules
    have different compositions (extxyz data); None otherwise."""
    if cfg.dataset != "extxyz":
        return None
    from ..models.model import elements_of

    return extxyz.fit_element_references(ds, train_idx, elements_of(cfg))


def target_statistics(ds: MoleculeSet, train_idx, energy_scale: str = "mad", atom_ref=None,
                      elements=None) -> tuple[np.ndarray, np.ndarray]:
    """Training mean per target, and the scale: EGNN's mean absolute deviation (``mad``), or NequIP's RMS
    of the training force components × 1 Å (``force-rms``, energy models only), under which standardised
    forces have unit RMS. With per-element references ``atom_ref`` (columns of ``elements``), the statistics
    are those of the targets minus the references' sum over each molecule."""
    y = ds.y[train_idx]
    if atom_ref is not None:
        y = y - extxyz.compositions(ds, elements)[train_idx] @ atom_ref
    mean = y.mean(0)
    if energy_scale == "force-rms":
        if ds.forces is None:
            raise ValueError("energy_scale=force-rms: this dataset has no forces")
        forces = ds.subset(train_idx).forces  # (n_atoms, 3), force unit (e.g. meV/Å)
        return mean, np.full_like(mean, float(np.sqrt(np.mean(forces ** 2))))
    mad = np.abs(y - mean).mean(0)
    return mean, np.where(mad > 0, mad, 1.0)


def zero_force_mae(ds: MoleculeSet, idx) -> float | None:
    """MAE of predicting zero forces on molecules ``idx`` (the floor a force model must beat), or None."""
    return None if ds.forces is None else float(np.abs(ds.subset(idx).forces).mean())


class EpochShuffle(torch.utils.data.Sampler):
    """A shuffle that is a function of (seed, epoch) only, so a resumed run sees the same batches as an
    uninterrupted one whatever else drew from the global RNG. Lightning calls ``set_epoch``."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class MoleculeDataModule(L.LightningDataModule):
    def __init__(self, cfg: Config, dataset: MoleculeSet | None = None, split: dict | None = None):
        super().__init__()
        self.cfg = cfg
        if split is None:
            dataset, split = build_splits(cfg, dataset)
        self.dataset = dataset
        self.split = split
        self.sets = {k: dataset.subset(v) for k, v in split.items()}
        self.resident = {}  # name → ResidentSet, with data_on_device
        # your own file's SHA-256, saved in split.npz: a resumed run checks the file did not change
        self.fingerprint = extxyz.file_sha256(cfg.data_path) if cfg.dataset == "extxyz" else None

    def save_split(self, path: Path) -> None:
        """Written atomically (temp file + rename), like the checkpoints."""
        from ..atomic import write_atomic

        buffer = io.BytesIO()
        extra = {"data_sha256": np.array(self.fingerprint)} if self.fingerprint else {}
        np.savez(buffer, **{k: self.dataset.mol_ids[v] for k, v in self.split.items()},
                 **{f"{k}_position": v for k, v in self.split.items()}, **extra)
        write_atomic(path, buffer.getbuffer())

    def device(self) -> torch.device:
        """Where training runs (the trainer's root device; the CPU before a trainer is attached)."""
        trainer = getattr(self, "trainer", None)
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def loader(self, name: str, shuffle: bool = False) -> torch.utils.data.DataLoader:
        ds = self.sets[name]
        if self.cfg.data_on_device:  # the same batches, built on the device from a copy kept there
            if name not in self.resident:
                self.resident[name] = ResidentSet(ds, self.device())
            ds = self.resident[name]
        # one process: our epoch-seeded shuffle; DDP: Lightning's DistributedSampler (seed + epoch, also exact)
        sampler = EpochShuffle(len(ds), self.cfg.seed) if shuffle and self.cfg.devices * self.cfg.num_nodes == 1 else None
        return torch.utils.data.DataLoader(
            ds, batch_size=self.cfg.batch_size, shuffle=shuffle and sampler is None, sampler=sampler, collate_fn=ds.collate,
            num_workers=self.cfg.num_workers, persistent_workers=self.cfg.num_workers > 0,
        )

    def train_dataloader(self):
        return self.loader("train", shuffle=True)

    def val_dataloader(self):
        return self.loader("val")

    def test_dataloader(self):
        return self.loader("test")
