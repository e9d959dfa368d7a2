"""Supervised multi-task learning through the aggregation layer.

* :class:`MultiTaskTrainer` — wrap any PyTorch model (shared parameters + per-task heads/losses) and train
  it with any aggregator: ``weights, losses = trainer.step(batch)``.
* Benchmarks: ``python -m mtrl.supervised bench=toy|multidigits|noisyregression|multimnist agg=<name>``
  (:mod:`mtrl.supervised.bench`, :mod:`mtrl.supervised.toy`, data in :mod:`mtrl.supervised.data`,
  models in :mod:`mtrl.supervised.models`).
"""

from mtrl.supervised.adapter import MultiTaskTrainer, StepOutput, build_aggregator

__all__ = ["MultiTaskTrainer", "StepOutput", "build_aggregator"]
