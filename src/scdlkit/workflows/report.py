"""The Markdown report of a :class:`~scdlkit.TaskRunner`: metrics, CSV tables and figures."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from .._version import __version__
from ..data import PreparedData
from ..evaluation._tables import confusion_table, metrics_table, per_class_table
from ..pipeline.build import LABEL_TASKS
from ..train import Trainer


class ReportedRunner(Protocol):
    """What a report reads from a fitted runner (:class:`~scdlkit.TaskRunner` is one)."""

    model: str
    task: str
    metrics_: dict[str, Any] | None
    prepared_: PreparedData | None
    fit_seconds_: float | None

    @property
    def label_key(self) -> str | None:
        """``.obs`` column with the labels."""

    @property
    def batch_key(self) -> str | None:
        """``.obs`` column with the batches."""

    @property
    def trainer_(self) -> Trainer | None:
        """The fitted trainer."""

    @property
    def n_parameters_(self) -> int:
        """Trainable parameters."""

    def get_params(self) -> dict[str, Any]:
        """Return the runner's settings."""

    def plot_losses(self, **kwargs: Any) -> Any:
        """Draw the losses."""

    def plot_latent(self, **kwargs: Any) -> Any:
        """Draw the latent space."""

    def plot_reconstruction(self, **kwargs: Any) -> Any:
        """Draw the reconstruction."""

    def plot_confusion_matrix(self, **kwargs: Any) -> Any:
        """Draw the confusion matrix."""


def markdown_table(frame: pd.DataFrame, *, index: bool = False, digits: int = 4) -> str:
    """Format a DataFrame as a GitHub-flavoured Markdown table (floats to ``digits`` significant digits).

    Examples
    --------
    >>> print(markdown_table(pd.DataFrame({"metric": ["mse"], "value": [0.123456]})))
    | metric | value |
    | --- | --- |
    | mse | 0.1235 |
    """
    if index:
        frame = frame.reset_index()

    def cell(value: Any) -> str:
        if isinstance(value, float | np.floating):
            return "nan" if not np.isfinite(value) else f"{value:.{digits}g}"
        return str(value).replace("|", "\\|")

    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def _save(fig: Any, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path.name


def _figures(runner: ReportedRunner, folder: Path, latent_method: str) -> dict[str, str]:
    figures = {
        "Training and validation loss": _save(
            runner.plot_losses(show=False, return_fig=True), folder / "losses.png"
        )
    }
    if runner.prepared_ is None:
        return figures
    figures[f"Latent space ({latent_method}, all cells)"] = _save(
        runner.plot_latent(method=latent_method, show=False, return_fig=True),
        folder / "latent.png",
    )
    if runner.task in LABEL_TASKS:
        figures["Confusion matrix (held-out cells)"] = _save(
            runner.plot_confusion_matrix(show=False, return_fig=True),
            folder / "confusion_matrix.png",
        )
    else:
        figures["Reconstruction of the most variable genes (held-out cells)"] = _save(
            runner.plot_reconstruction(show=False, return_fig=True),
            folder / "reconstruction.png",
        )
    return figures


def write_report(runner: ReportedRunner, folder: Path, *, latent_method: str = "umap") -> Path:
    """Write ``report.md``, ``metrics.csv`` and the figures of a fitted runner into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    metrics = runner.metrics_ or {}
    table = metrics_table(metrics)
    table.to_csv(folder / "metrics.csv", index=False)
    lines = [
        f"# scdlkit report: `{runner.model}` ({runner.task})",
        "",
        f"Written {datetime.now():%Y-%m-%d %H:%M} with scdlkit {__version__}.",
        "",
        "## Data",
        "",
    ]
    prepared = runner.prepared_
    if prepared is not None:
        sizes = ", ".join(f"{name} {len(split)}" for name, split in prepared.splits.items())
        lines.append(f"- source: `{prepared.source}`, {prepared.input_dim} model features")
        lines.append(f"- cells: {sizes}")
    else:
        lines.append("- the runner was loaded from disk; its training data is not at hand")
    for role, key in (("labels", runner.label_key), ("batches", runner.batch_key)):
        if key is not None:
            lines.append(f"- {role}: `.obs['{key}']`")
    trainer = runner.trainer_
    history = trainer.history_frame
    best_loss = trainer.best_loss
    lines += [
        "",
        "## Training",
        "",
        f"- epochs run: {trainer.epochs_run} of at most {trainer.epochs}; best epoch "
        f"{trainer.best_epoch} (loss {best_loss:.4g})"
        if best_loss is not None
        else f"- epochs run: {trainer.epochs_run}",
        f"- trainable parameters: {runner.n_parameters_:,}",
    ]
    if runner.fit_seconds_ is not None:
        lines.append(f"- training time: {runner.fit_seconds_:.1f} s on {trainer.device}")
    if not history.empty:
        lines.append(f"- final training loss: {history['train_loss'].iloc[-1]:.4g}")
    lines += ["", "## Metrics", ""]
    if "evaluated" in metrics:
        lines += [
            f"Scored on the {metrics['evaluated']} ({metrics.get('n_cells', '?')} cells).",
            "",
        ]
    lines += [markdown_table(table) if not table.empty else "No metrics.", ""]
    if "per_class" in metrics:
        per_class = per_class_table(metrics)
        per_class.to_csv(folder / "per_class.csv")
        confusion_table(metrics).to_csv(folder / "confusion_matrix.csv")
        lines += ["### Per class", "", markdown_table(per_class, index=True), ""]
    figures = _figures(runner, folder, latent_method)
    lines += ["## Figures", ""]
    for title, name in figures.items():
        lines += [f"### {title}", "", f"![{title}]({name})", ""]
    settings = json.dumps(runner.get_params(), indent=2, default=str)
    lines += ["## Settings", "", "```json", settings, "```", ""]
    report = folder / "report.md"
    report.write_text("\n".join(lines))
    return report
