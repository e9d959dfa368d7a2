"""QM9, 11 regression targets of small molecules (PIVRG Table 3), the Nash-MTL setup.

    python -m mtrl.supervised bench=qm9 data_dir=~/data/qm9 agg=pivrg

* **Data**: ``torch_geometric.datasets.QM9`` on a local root, never downloading (:class:`LocalQM9`: a missing
  raw file is a :class:`BenchmarkDataError` naming the files expected). The targets are the columns
  ``[0, 1, 2, 3, 5, 6, 12, 13, 14, 15, 11]`` of PyG's ``y``: μ, α, ε_HOMO, ε_LUMO, ⟨R²⟩, ZPVE, then U0, U, H, G
  as atomization energies, and c_v (the gap, column 4, is left out). Each graph is made complete without
  self loops (edge features 0 where there is no bond) and gets the interatomic distance appended to its
  edge features (``Distance(norm=False)``): 11 node and 5 edge features.
* **Split**: a permutation drawn with the seed; the first 10,000 molecules are the test split, the next
  10,000 the validation split, the rest (110,831) the training split (the sizes are ``test_size`` /
  ``val_size``).
* **Target normalisation** (``scale_targets``, on): ``(y − mean) / std`` with the mean and standard deviation
  of every molecule in the root, as the authors' ``train_dataset.data.y`` reads PyG's whole storage.
* **Model** (:class:`MPNN`): Linear 11→64 + ReLU; three rounds of one shared NNConv (edge network
  Linear 5→128, ReLU, Linear 128→64·64; mean aggregation) + ReLU + GRU; Set2Set (3 steps); Linear 128→64 +
  ReLU; one Linear 64→1 head per target. Shared parameters: everything but the heads.
* **Losses**: per-target mean squared error on the normalised targets.
* **Metric**: per-target mean absolute error in the original units (normalisation undone); ε_HOMO, ε_LUMO,
  ZPVE, U0, U, H and G in meV (×1000), the others in PyG's units (D, a0³, a0², cal/mol·K).
* **Recipe** (``configs/bench/qm9.yaml``): Adam lr 1e-3, 300 epochs, batch 120, ReduceLROnPlateau (factor
  0.7, patience 5, min lr 1e-5) stepped on the validation Δm; the test metrics of the epoch with the best
  validation Δm are reported (the Nash-MTL / PIVRG trainers).
* **PIVRG's Δm** comes from the validation split (PIVRG Sec. 4.1).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtrl.supervised.benchmarks import Benchmark, BenchmarkDataError, MetricColumn, Splits, register

__all__ = ["QM9", "MPNN", "LocalQM9", "TARGETS", "complete_graph"]

#: PyG ``y`` columns, in the order of the tasks.
TARGETS: tuple[int, ...] = (0, 1, 2, 3, 5, 6, 12, 13, 14, 15, 11)
_NAMES = ("mu", "alpha", "homo", "lumo", "r2", "zpve", "U0", "U", "H", "G", "cv")
_HEADERS = ("μ", "α", "ε_HOMO", "ε_LUMO", "⟨R²⟩", "ZPVE", "U0", "U", "H", "G", "c_v")
#: tasks reported in meV (PyG stores eV): ε_HOMO, ε_LUMO, ZPVE, U0, U, H, G.
_MILLI = ("homo", "lumo", "zpve", "U0", "U", "H", "G")
#: the real data's sizes, for ``synthetic_batch``: QM9 molecules have 18 atoms on average (hydrogens included).
_ATOMS = 18
_NODE_FEATURES, _EDGE_FEATURES = 11, 5

_LAYOUT = (
    "  <data_dir>/raw/qm9_v3.pt       PyG's preprocessed QM9 (read when RDKit is not installed), or\n"
    "  <data_dir>/raw/gdb9.sdf, gdb9.sdf.csv, uncharacterized.txt   the raw release (read when RDKit is installed),\n"
    "  or <data_dir>/processed/data_v3.pt from an earlier torch_geometric.datasets.QM9(<data_dir>).\n"
    "Published by MoleculeNet (qm9.zip) and PyG (qm9_v3.zip); `python -c \"from torch_geometric.datasets import QM9; "
    "QM9('<data_dir>')\"` on a machine with internet fills <data_dir> (130,831 molecules).")


def complete_graph(data: Any) -> Any:
    """Every ordered pair of distinct atoms becomes an edge; bonded pairs keep their bond features, the others
    get zeros (the Nash-MTL ``Complete`` transform's result)."""
    n = data.num_nodes
    row = torch.arange(n).repeat_interleave(n)
    col = torch.arange(n).repeat(n)
    keep = row != col
    if data.edge_attr is not None:
        features = data.edge_attr.new_zeros(n * n, data.edge_attr.shape[1])
        features[data.edge_index[0] * n + data.edge_index[1]] = data.edge_attr
        data.edge_attr = features[keep]
    data.edge_index = torch.stack([row[keep], col[keep]])
    return data


class _Transform:
    """Target selection (+ normalisation), complete graph, distances; a class so DataLoader workers can pickle it."""

    def __init__(self, mean: Tensor | None, std: Tensor | None) -> None:
        from torch_geometric.transforms import Distance

        self.mean, self.std = mean, std
        self.distance = Distance(norm=False)

    def __call__(self, data: Any) -> Any:
        y = data.y[:, list(TARGETS)]
        data.y = y if self.mean is None else (y - self.mean) / self.std
        return self.distance(complete_graph(data))


def _local_qm9():
    from torch_geometric.datasets import QM9 as PygQM9

    class LocalQM9(PygQM9):
        """PyG's QM9 that never downloads: a missing raw file is an error naming the layout."""

        def download(self) -> None:
            processed = Path(self.processed_dir) / self.processed_file_names
            if processed.is_file():
                return            # processing is skipped; PyG only checks the raw files first
            raise BenchmarkDataError(f"{self.raw_dir} lacks {', '.join(self.raw_file_names)}. Expected layout:\n{_LAYOUT}")

    return LocalQM9


def _raw_file_names() -> list[str]:
    """What PyG's QM9 reads from ``raw/``: the raw release with RDKit installed, its own preprocessed file without."""
    try:
        import rdkit  # noqa: F401
    except ImportError:
        return ["qm9_v3.pt"]
    return ["gdb9.sdf", "gdb9.sdf.csv", "uncharacterized.txt"]


def _check_root(root: Path) -> None:
    """Fail before PyG touches ``root`` (it would create ``raw/`` and download) unless the data are there."""
    if not root.is_dir():
        raise BenchmarkDataError(f"{root} is not a directory. Expected layout:\n{_LAYOUT}")
    if (root / "processed" / "data_v3.pt").is_file():
        return
    missing = [name for name in _raw_file_names() if not (root / "raw" / name).is_file()]
    if missing:
        raise BenchmarkDataError(f"{root / 'raw'} lacks {', '.join(missing)} (and there is no processed/data_v3.pt). "
                                 f"Expected layout:\n{_LAYOUT}")


def LocalQM9(root: str | Path, transform: Any = None):  # noqa: N802 - a class built on first use (lazy PyG import)
    """``torch_geometric.datasets.QM9(root, transform)`` without downloads (see :func:`_local_qm9`)."""
    return _local_qm9()(str(root), transform=transform)


class MPNN(nn.Module):
    """The Nash-MTL / PIVRG QM9 network (Gilmer et al.'s MPNN with Set2Set readout), one head per target."""

    def __init__(self, num_tasks: int = len(TARGETS), num_features: int = _NODE_FEATURES, dim: int = 64) -> None:
        super().__init__()
        from torch_geometric.nn import NNConv, Set2Set

        edge_network = nn.Sequential(nn.Linear(_EDGE_FEATURES, 128), nn.ReLU(), nn.Linear(128, dim * dim))
        self.shared = nn.ModuleDict({
            "embed": nn.Linear(num_features, dim),
            "conv": NNConv(dim, dim, edge_network, aggr="mean"),
            "gru": nn.GRU(dim, dim),
            "readout": Set2Set(dim, processing_steps=3),
            "project": nn.Linear(2 * dim, dim),
        })
        self.heads = nn.ModuleList(nn.Linear(dim, 1) for _ in range(num_tasks))

    def forward(self, data: Any) -> Tensor:
        """``[graphs, k]`` predictions (normalised units)."""
        s = self.shared
        out = F.relu(s["embed"](data.x))
        hidden = out.unsqueeze(0)
        for _ in range(3):
            message = F.relu(s["conv"](out, data.edge_index, data.edge_attr))
            out, hidden = s["gru"](message.unsqueeze(0), hidden)
            out = out.squeeze(0)
        features = F.relu(s["project"](s["readout"](out, data.batch)))
        return torch.cat([head(features) for head in self.heads], dim=1)


class _MAE:
    """Per-target mean absolute error over a split, in the table's units."""

    def __init__(self, std: Tensor | None) -> None:
        scale = torch.ones(len(TARGETS), dtype=torch.float64) if std is None else std.double().flatten()
        self.scale = scale * torch.tensor([1000.0 if name in _MILLI else 1.0 for name in _NAMES], dtype=torch.float64)
        self.total = torch.zeros(len(TARGETS), dtype=torch.float64)
        self.count = 0

    def update(self, outputs: Tensor, batch: Any) -> None:
        self.total += (outputs.detach().double() - batch.y.double()).abs().sum(0).cpu()
        self.count += outputs.shape[0]

    def compute(self) -> dict[str, float]:
        mae = self.total * self.scale / max(self.count, 1)
        return dict(zip(_NAMES, mae.tolist()))


@register
class QM9(Benchmark):
    """Options: ``test_size``, ``val_size`` (split sizes), ``scale_targets`` (normalise the targets); ``atoms``
    (atoms per molecule) sizes :meth:`synthetic_batch` only."""

    name = "qm9"
    tasks = _NAMES
    columns = tuple(MetricColumn(name, name, False, header) for name, header in zip(_NAMES, _HEADERS))
    performance_split = "val"
    layout = _LAYOUT
    train_size = 110_831
    quick_options = {"atoms": 5}

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.std: Tensor | None = None

    def splits(self, data_dir: Path, *, seed: int, noise: float = 0.0) -> Splits:
        root = Path(data_dir).expanduser()
        _check_root(root)
        try:
            raw = LocalQM9(root)
        except BenchmarkDataError:
            raise
        except Exception as error:   # noqa: BLE001 - PyG's reader fails in many ways on a malformed file
            raise BenchmarkDataError(f"{root}: torch_geometric could not read QM9 ({type(error).__name__}: {error}). "
                                     f"Expected layout:\n{_LAYOUT}") from error
        y = raw.y[:, list(TARGETS)].double()     # every molecule in the root (PyG storage)
        mean = std = None
        if bool(self.options.get("scale_targets", True)):
            mean, std = y.mean(0, keepdim=True).float(), y.std(0, keepdim=True).float()
            self.std = std
        dataset = LocalQM9(root, transform=_Transform(mean, std))
        n_test, n_val = int(self.options.get("test_size", 10_000)), int(self.options.get("val_size", 10_000))
        if len(dataset) <= n_test + n_val:
            raise BenchmarkDataError(f"{root} holds {len(dataset)} molecules, not more than test_size + val_size = "
                                     f"{n_test + n_val}; is it the whole QM9 (130,831)? Expected layout:\n{_LAYOUT}")
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(int(seed)))
        return Splits(train=dataset[order[n_test + n_val:]], val=dataset[order[n_test:n_test + n_val]],
                      test=dataset[order[:n_test]])

    def loader(self, dataset, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None) -> Iterable[Any]:
        from torch_geometric.loader import DataLoader

        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                          num_workers=int(self.options.get("num_workers") or 0))

    def build_model(self) -> MPNN:
        return MPNN()

    def forward(self, model: nn.Module, batch: Any) -> Tensor:
        return model(batch)

    def losses(self, outputs: Tensor, batch: Any) -> Tensor:
        return F.mse_loss(outputs, batch.y, reduction="none").mean(0)

    def new_metrics(self) -> _MAE:
        return _MAE(self.std)

    def synthetic_batch(self, batch_size: int, generator: torch.Generator) -> Any:
        from torch_geometric.data import Batch, Data

        atoms = int(self.options.get("atoms") or _ATOMS)
        graphs = []
        for _ in range(batch_size):
            bonds = torch.stack([torch.arange(atoms - 1), torch.arange(1, atoms)])
            data = Data(x=torch.rand(atoms, _NODE_FEATURES, generator=generator),
                        edge_index=torch.cat([bonds, bonds.flip(0)], 1),
                        edge_attr=torch.rand(2 * (atoms - 1), _EDGE_FEATURES - 1, generator=generator),
                        pos=torch.randn(atoms, 3, generator=generator),
                        y=torch.randn(1, 19, generator=generator))
            graphs.append(_Transform(None, None)(data))
        return Batch.from_data_list(graphs)
