"""Tiny data directories in the exact on-disk layouts of the paper benchmarks (no real data is downloaded).

* :func:`write_dense` — MTAN's ``.npy`` release (NYUv2 with normals, Cityscapes with ``label_7``), images of
  32×64 (the smallest MTAN-SegNet accepts is 32×32).
* :func:`write_qm9` — PyG's ``QM9`` root with ``raw/qm9_v3.pt`` (the preprocessed file PyG reads when RDKit is
  absent): random small molecules with the release's fields.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

CI_OVERRIDES = ("bench.epochs=2", "bench.max_steps_per_epoch=2", "device=cpu", "tensorboard=false")


def write_dense(root: Path, *, label_folder: str = "label", num_classes: int = 13, normals: bool = True,
                n_train: int = 4, n_val: int = 2, size: tuple[int, int] = (32, 64), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    h, w = size
    for split, n in (("train", n_train), ("val", n_val)):
        for folder in ("image", label_folder, "depth") + (("normal",) if normals else ()):
            (root / split / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            np.save(root / split / "image" / f"{i}.npy", rng.random((h, w, 3), dtype=np.float32))
            np.save(root / split / label_folder / f"{i}.npy",
                    rng.integers(-1, num_classes, (h, w)).astype(np.float32))
            depth = rng.uniform(0.5, 5.0, (h, w, 1)).astype(np.float32)
            depth[rng.random((h, w)) < 0.1] = 0.0            # pixels without a measurement
            np.save(root / split / "depth" / f"{i}.npy", depth)
            if normals:
                normal = rng.normal(size=(h, w, 3)).astype(np.float32)
                normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
                normal[rng.random((h, w)) < 0.1] = 0.0
                np.save(root / split / "normal" / f"{i}.npy", normal)
    return root


def write_qm9(root: Path, n: int = 60, seed: int = 0) -> Path:
    """``n`` random molecules of 3–7 atoms in PyG's preprocessed QM9 format (a list of dicts)."""
    generator = torch.Generator().manual_seed(seed)
    molecules = []
    for index in range(n):
        atoms = int(torch.randint(3, 8, (1,), generator=generator))
        types = torch.randint(0, 5, (atoms,), generator=generator)
        x = torch.cat([torch.nn.functional.one_hot(types, 5).float(), torch.rand(atoms, 6, generator=generator)], 1)
        bonds = [(a, a + 1) for a in range(atoms - 1)]                      # a chain: bonds in both directions
        edge_index = torch.tensor([[a for a, b in bonds] + [b for a, b in bonds],
                                   [b for a, b in bonds] + [a for a, b in bonds]], dtype=torch.long)
        bond_types = torch.randint(0, 4, (len(bonds),), generator=generator).repeat(2)
        molecules.append({
            "x": x, "edge_index": edge_index, "edge_attr": torch.nn.functional.one_hot(bond_types, 4).float(),
            "y": torch.randn(1, 19, generator=generator) * torch.linspace(0.5, 20, 19),
            "pos": torch.randn(atoms, 3, generator=generator), "z": types + 1,
            "name": f"gdb_{index + 1}", "idx": index,
        })
    (root / "raw").mkdir(parents=True, exist_ok=True)
    torch.save(molecules, root / "raw" / "qm9_v3.pt")
    return root
