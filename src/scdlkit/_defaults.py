"""The defaults every surface shares, in a module that imports nothing.

``tl.fit``, ``TaskRunner``, the ``Trainer`` and the ``scdlkit`` command all
default to these values. They live here, free of torch and scanpy, so that the
command line can show them in ``scdlkit fit --help`` without importing the
training stack.
"""

from __future__ import annotations

#: Most training epochs (training stops earlier through early stopping).
DEFAULT_EPOCHS = 200
#: Epochs without improvement of the validation loss before training stops.
DEFAULT_PATIENCE = 20
#: Cells per training minibatch.
DEFAULT_BATCH_SIZE = 256
#: Learning rate of the optimizer.
DEFAULT_LR = 1e-3
#: Seed of the split, the initial weights and training.
DEFAULT_SEED = 42
#: Prefix of every key a run writes (``key_added``).
DEFAULT_KEY = "scdlkit"
