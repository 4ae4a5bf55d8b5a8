"""The one path under every front: task ↔ model, build, fit, bundle save/load, outputs.

``tl.fit``/``tl.predict``/``tl.evaluate``, ``TaskRunner``, ``compare_models``
and the ``scdlkit`` command all call these functions; none of them assembles a
model, a :class:`~scdlkit.Trainer` or a bundle by itself. The scGPT annotation
path (``adapt_annotation``), whose input is gene tokens rather than prepared
matrices, shares the layers under this one: :class:`~scdlkit.data.DataSpec`,
:class:`~scdlkit.train.TrainerOptions` with ``Trainer.from_options``, the
record/handler writers and the evaluation metrics.

Data flows down once (a :class:`~scdlkit.data.DataSpec` and
:class:`~scdlkit.train.TrainerOptions` → :func:`fit`), results flow up once
(a :class:`FittedRun` or :class:`LoadedRun` → arrays the fronts write).
"""

from .build import (
    LABEL_TASKS,
    build_model,
    check_labels,
    data_spec_for,
    input_kind,
    model_name,
    resolve_task,
)
from .fit import (
    DEFAULT_CHECKPOINT_DIR,
    FittedRun,
    checkpoint_path,
    fit,
    save_run,
    train,
    warn_raw_counts,
)
from .initialize import source_run
from .load import (
    DEFAULT_OUTPUTS,
    EXPRESSION_OUTPUTS,
    OUTPUTS,
    TRAINED,
    LoadedRun,
    load_run,
    requested_outputs,
    run_checkpoint,
)
from .mapping import map_query, reference_path

__all__ = [
    "LABEL_TASKS",
    "DEFAULT_CHECKPOINT_DIR",
    "DEFAULT_OUTPUTS",
    "EXPRESSION_OUTPUTS",
    "OUTPUTS",
    "TRAINED",
    "FittedRun",
    "LoadedRun",
    "build_model",
    "check_labels",
    "checkpoint_path",
    "data_spec_for",
    "fit",
    "input_kind",
    "load_run",
    "map_query",
    "model_name",
    "reference_path",
    "requested_outputs",
    "resolve_task",
    "run_checkpoint",
    "save_run",
    "source_run",
    "train",
    "warn_raw_counts",
]
