"""Temperature scaling of a classifier's logits on the labelled validation cells, after training."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scanpy import logging as logg

from ..data import SplitData
from ..evaluation import calibrated_probabilities, expected_calibration_error, fit_temperature
from ..tasks import unwrap_model
from ..train import Trainer


def calibrate(trainer: Trainer, val: SplitData | None) -> dict[str, Any] | None:
    """Fit the model's ``temperature`` on the labelled cells of ``val``; return the calibration record.

    Only models with a ``temperature`` buffer are calibrated (``None`` for the
    others); the temperature is :func:`~scdlkit.evaluation.fit_temperature`'s.
    The record holds the ``temperature``, the expected calibration error
    before and after (``ece_before``/``ece_after``, on the same cells; the
    log-loss optimum usually lowers it but need not) and ``n_cells``; without
    labelled validation cells the temperature stays 1 and ``skipped`` says why.
    The bundle then stores the temperature.
    """
    module = unwrap_model(trainer.model)
    if not isinstance(getattr(module, "temperature", None), torch.Tensor):
        return None
    module.temperature.fill_(1.0)
    labelled = np.zeros(0, dtype=bool)
    if val is not None and val.y is not None:
        labelled = val.y >= 0
        mask = getattr(module, "class_mask", None)
        if mask is not None:
            labelled &= mask.cpu().numpy()[np.clip(val.y, 0, None)]
    if labelled.sum() < 2:
        reason = "fewer than 2 labelled validation cells; the temperature stays 1"
        logg.warning(f"calibration skipped: {reason} (use a larger val_size)")
        trainer.keep_current_weights()
        return {"temperature": 1.0, "n_cells": int(labelled.sum()), "skipped": reason}
    logits = trainer.predict_dataset(val, outputs=["logits"], include_inputs=False)["logits"]
    logits, labels = logits[labelled], val.y[labelled]
    temperature = fit_temperature(logits, labels)
    module.temperature.fill_(temperature)
    trainer.keep_current_weights()
    record = {
        "temperature": temperature,
        "ece_before": expected_calibration_error(labels, calibrated_probabilities(logits, 1.0)),
        "ece_after": expected_calibration_error(
            labels, calibrated_probabilities(logits, temperature)
        ),
        "n_cells": int(labelled.sum()),
        "split": "val",
    }
    logg.info(
        f"    calibrated on {record['n_cells']} validation cells: temperature {temperature:.3g}, "
        f"ECE {record['ece_before']:.3f} → {record['ece_after']:.3f}"
    )
    return record
