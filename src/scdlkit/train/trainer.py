"""The ``Trainer``: scdlkit's training and inference loop."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..data import SplitData
from ..data.device_data import fits_on_device
from . import distributed
from .batches import BatchSource, to_device
from .bundle import BundleData
from .callbacks import Callback
from .checkpointing import CheckpointMixin
from .collect import collect_predictions
from .device import autocast, autocast_dtype, resolve_device
from .options import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    DEFAULT_LR,
    DEFAULT_PATIENCE,
    OptimizerSpec,
    SchedulerSpec,
    TrainerOptions,
    build_optimizer,
    build_scheduler,
)
from .preemption import StopSignals, TrainingInterrupted
from .prefetch import prefetch as prefetch_batches
from .state import SaveSchedule, describe_data


class Trainer(CheckpointMixin):
    """Train a model on a task and run batched inference with it.

    Parameters
    ----------
    model
        A scdlkit model (from :func:`~scdlkit.create_model`), a wrapped module
        (:mod:`scdlkit.adapters`) or any ``nn.Module`` that declares
        ``supported_tasks`` and returns the outputs the task needs.
    task
        Task name (``"representation"``, ``"reconstruction"``, ``"classification"``)
        or a task instance.
    epochs
        Maximum number of epochs.
    batch_size
        Cells per minibatch.
    lr
        Learning rate.
    weight_decay
        Weight decay passed to the optimizer.
    optimizer
        ``"adam"``, ``"adamw"``, ``"sgd"``, or a callable ``params -> Optimizer``.
        Adam and AdamW use torch's fused single-kernel step where it is
        supported (CPU with torch >= 2.4, CUDA): same update, several times faster.
    scheduler
        ``None``, ``"cosine"`` (cosine annealing over ``epochs``), ``"plateau"``
        (halve the LR after 3 epochs without improvement), ``"step"`` (×0.5 every
        ``max(1, epochs // 4)`` epochs) or a callable ``optimizer -> scheduler``;
        stepped once per epoch.
    grad_clip
        Clip the gradient norm to this value (``None`` does not clip).
    device
        ``"auto"`` (CUDA, then MPS, then CPU) or a device string.
    mixed_precision
        ``True``: float16 autocast with a gradient scaler on CUDA; a no-op on CPU,
        where bfloat16 is usually slower (ask for it with ``"bf16"``).
    early_stopping_patience
        Stop after this many evaluated epochs without improvement of the
        monitored loss (validation loss, or training loss without validation data);
        ``None`` disables early stopping.
    min_delta
        Smallest decrease of the monitored loss that counts as an improvement.
    checkpoint
        Keep the best weights in memory and restore them when training ends.
    seed
        Seed of shuffling, dropout and sampling; CPU runs with the same seed and
        the same initial weights are bit-for-bit identical.
    val_every
        Evaluate on the validation data every this many epochs (and at the last).
    eval_batch_size
        Cells per batch for validation and :meth:`predict_dataset` (no gradients
        are kept, so larger batches are faster); defaults to ``4 * batch_size``.
    num_workers
        Worker processes for plain torch ``Dataset`` inputs.
    prefetch
        Minibatches a background thread prepares ahead while the model computes
        (``0``: none). ``"auto"`` prefetches 2 on CUDA (with pinned memory and
        non-blocking copies) and none on CPU, where torch already uses the cores.
    data_on_device
        Copy the training and validation cells to the device once and build
        every minibatch there (for ``SplitData`` inputs held in memory).
        ``"auto"`` does so on CUDA when the split takes under half of the free
        GPU memory; ``True`` forces it (also on CPU, where it gains nothing).
    compile_model
        Run the model through :func:`torch.compile` (opt-in: the first batches
        pay the compilation, seconds to minutes; later ones run faster on GPUs).
    strategy
        ``"auto"`` trains with ``DistributedDataParallel`` when the process was
        started by ``torchrun`` with several processes (``--nproc_per_node``),
        and in this process otherwise; ``"ddp"`` requires ``torchrun``;
        ``"single"`` never distributes. Under DDP every rank trains on its shard
        of the training data (``batch_size`` is per rank), losses are summed over
        ranks, and only rank 0 writes checkpoints (see :doc:`/distributed`).
    progress
        Show a tqdm progress bar; ``None`` shows it only in an interactive terminal.
    callbacks
        :class:`~scdlkit.train.Callback` instances.
    verbose
        Write one summary line per epoch.
    save_every
        Write the full training state into ``state_dir`` every this many epochs,
        so that a killed run can go on (``fit(..., resume_from=state_dir)``).
    save_every_minutes
        Also write it after any step once this many minutes have passed since
        the last write.
    state_dir
        Folder of the training states (see :doc:`/resume`); only the two newest
        are kept. With a ``state_dir``, SIGTERM and Ctrl-C finish the current
        step, write the state and raise
        :class:`~scdlkit.train.preemption.TrainingInterrupted`.

    Examples
    --------
    >>> import scdlkit
    >>> from scdlkit import Trainer, create_model, prepare_data
    >>> adata = scdlkit.datasets.pbmc68k_reduced()
    >>> prepared = prepare_data(adata, label_key="bulk_labels")
    >>> model = create_model("vae", input_dim=prepared.input_dim, latent_dim=16)
    >>> trainer = Trainer(model, "representation", epochs=3, batch_size=128)
    >>> trainer = trainer.fit(prepared.train, prepared.val)
    >>> trainer.predict_dataset(prepared.test)["latent"].shape
    (105, 16)
    """

    def __init__(
        self,
        model: nn.Module,
        task: str | Any,
        *,
        epochs: int = DEFAULT_EPOCHS,
        batch_size: int = DEFAULT_BATCH_SIZE,
        lr: float = DEFAULT_LR,
        weight_decay: float = 0.0,
        optimizer: OptimizerSpec = "adam",
        scheduler: SchedulerSpec = None,
        grad_clip: float | None = None,
        device: str | torch.device = "auto",
        mixed_precision: bool | str = False,
        early_stopping_patience: int | None = DEFAULT_PATIENCE,
        min_delta: float = 0.0,
        checkpoint: bool = True,
        seed: int = 42,
        val_every: int = 1,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        prefetch: int | str = "auto",
        data_on_device: bool | str = "auto",
        compile_model: bool = False,
        strategy: str = "auto",
        progress: bool | None = None,
        callbacks: Sequence[Callback] = (),
        verbose: bool = False,
        save_every: int | None = None,
        save_every_minutes: float | None = None,
        state_dir: str | os.PathLike | None = None,
    ) -> None:
        from ..tasks import get_task

        if not isinstance(model, nn.Module):
            msg = f"model must be a torch.nn.Module, got {type(model).__name__}."
            raise TypeError(msg)
        self.task = get_task(task)
        self.task.check_model(model)
        options = TrainerOptions(
            epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
            optimizer=optimizer, scheduler=scheduler, grad_clip=grad_clip, device=device,
            mixed_precision=mixed_precision, early_stopping_patience=early_stopping_patience,
            min_delta=min_delta, checkpoint=checkpoint, seed=seed, val_every=val_every,
            eval_batch_size=eval_batch_size, num_workers=num_workers, prefetch=prefetch,
            data_on_device=data_on_device, compile_model=compile_model, strategy=strategy,
            progress=progress, callbacks=tuple(callbacks), verbose=verbose, save_every=save_every,
            save_every_minutes=save_every_minutes, state_dir=state_dir,
        )  # fmt: skip
        if options.saves_state and state_dir is None:
            msg = "save_every/save_every_minutes need state_dir= (the folder for the training states)."
            raise ValueError(msg)
        self.options = options
        use_ddp = distributed.wants_distributed(strategy)
        self.device = resolve_device(distributed.local_device(device) if use_ddp else device)
        self.distributed = distributed.setup(self.device) if use_ddp else None
        self.autocast_dtype = autocast_dtype(self.device, mixed_precision)
        self.model = model.to(self.device)
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.optimizer_spec = optimizer
        self.scheduler_spec = scheduler
        self.grad_clip = grad_clip
        self.mixed_precision = mixed_precision
        self.early_stopping_patience = early_stopping_patience
        self.min_delta = float(min_delta)
        self.checkpoint = bool(checkpoint)
        self.seed = int(seed)
        self.val_every = int(val_every)
        self.eval_batch_size = int(eval_batch_size or 4 * self.batch_size)
        self.num_workers = int(num_workers)
        if prefetch == "auto":
            prefetch = 2 if self.device.type == "cuda" else 0
        self.prefetch = int(prefetch)
        self.data_on_device = data_on_device
        self.compile_model = bool(compile_model)
        self.progress = progress
        self.callbacks = list(callbacks)
        self.verbose = verbose

        self.history: list[dict[str, float]] = []
        self.best_epoch: int | None = None
        self.best_loss: float | None = None
        self.epochs_run = 0
        self.stop_training = False
        self.interrupted = False
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.checkpoint_config: dict[str, Any] | None = None
        self._bad_epochs = 0
        self._best_state: dict[str, torch.Tensor] | None = None
        self._last_state: dict[str, torch.Tensor] | None = None
        self._rng_state: torch.Tensor | None = None
        self._forward_model: nn.Module = self.model
        self._compiled_for_inference: nn.Module | None = None
        self._scaler = torch.amp.GradScaler(
            "cuda", enabled=self.device.type == "cuda" and self.autocast_dtype == torch.float16
        )
        if state_dir is not None and self.distributed is not None:
            state_dir = distributed.broadcast(str(state_dir))  # rank 0 writes: its folder counts
        self._saves = (
            None
            if state_dir is None
            else SaveSchedule(Path(state_dir), save_every, save_every_minutes)
        )
        self._signals = StopSignals(enabled=False)
        self._prepared: BundleData | None = None
        self._training_data: dict[str, Any] | None = None
        self._position: dict[str, Any] | None = None
        self.resumed_from: Path | None = None

    def __repr__(self) -> str:
        ranks = "" if self.distributed is None else f", ddp={self.distributed.world_size} ranks"
        return (
            f"Trainer({type(self.model).__name__}, task={self.task.name!r}, device={self.device.type!r}"
            f"{ranks}, epochs_run={self.epochs_run}/{self.epochs})"
        )

    @property
    def is_main_process(self) -> bool:
        """Whether this process writes checkpoints (always, except ranks > 0 under DDP)."""
        return self.distributed is None or self.distributed.is_main

    # ------------------------------------------------------------------ settings
    def _build_optimizer(self) -> torch.optim.Optimizer:
        return build_optimizer(self.model, self.options)

    def _build_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        return build_scheduler(optimizer, self.options)

    # ------------------------------------------------------------------ training
    def fit(
        self,
        train: Any,
        val: Any = None,
        *,
        resume_from: str | os.PathLike | None = None,
        prepared: BundleData | None = None,
    ) -> Trainer:
        """Train on ``train``, monitoring ``val``; returns ``self``.

        Parameters
        ----------
        train
            ``SplitData`` (e.g. ``prepared.train``), a torch ``Dataset`` of per-cell
            dictionaries, a ``DataLoader`` or a list of batch dictionaries.
        val
            Validation data of the same kinds, or ``None`` (then the training loss
            is monitored).
        resume_from
            A training state (a ``state_dir``, or one state in it) or a checkpoint
            written by :meth:`save_checkpoint`: weights, optimizer, scheduler,
            RNG states, history and the position in the epoch are restored and
            training goes on up to ``epochs``; on CPU the result is the one of an
            uninterrupted run. The model, data and settings must be the same
            (a larger ``epochs`` trains further).
        prepared
            The :class:`~scdlkit.data.PreparedData` of ``train`` (any object with
            ``bundle_fields()``): written into every state, so that a state is a
            bundle :func:`scdlkit.tl.predict` can use, and compared on resume.

        Returns
        -------
        The fitted trainer. ``history_frame`` holds one row per epoch; with
        ``checkpoint=True`` the model holds the best weights. Without a
        ``state_dir``, ``Ctrl-C`` stops cleanly: the best weights are restored
        and the history kept.

        Raises
        ------
        NotImplementedError
            The model is inference-only (``supports_training=False``).
        ValueError
            ``resume_from`` belongs to another model, data or settings.
        TrainingInterrupted
            SIGTERM or Ctrl-C arrived while training with a ``state_dir``: the
            state was written, the message says how to resume.
        """
        if not getattr(self.model, "supports_training", True):
            msg = (
                f"{type(self.model).__name__} is inference-only (supports_training=False); it can be "
                "used with predict_dataset(...) but not trained."
            )
            raise NotImplementedError(msg)
        train_source = self._source(train, self.batch_size, shuffle=True, role="train")
        val_source = (
            None
            if val is None
            else self._source(val, self.eval_batch_size, shuffle=False, role="val")
        )
        self._forward_model = self._training_module()
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        stopped = None
        with torch.random.fork_rng(devices=devices):
            rank = 0 if self.distributed is None else self.distributed.rank
            torch.manual_seed(self.seed + rank)  # ranks draw different dropout/noise
            self._start(resume_from, prepared, train, val)
            for callback in self.callbacks:
                callback.on_fit_start(self)
            self._signals = StopSignals(enabled=self._saves is not None)
            try:
                with self._signals:
                    self._run_epochs(train_source, val_source)
            except KeyboardInterrupt:
                self.interrupted = True
                tqdm.write(
                    f"Training interrupted after {self.epochs_run} epochs; keeping the best weights.",
                    file=sys.stderr,
                )
            except TrainingInterrupted as error:
                self.interrupted, stopped = True, error
            self._finish()
        for callback in self.callbacks:
            callback.on_fit_end(self)
        if stopped is not None:
            raise stopped
        return self

    def _source(self, data: Any, batch_size: int, *, shuffle: bool, role: str) -> BatchSource:
        ddp = self.distributed if role != "predict" else None  # prediction is not sharded
        on_device = self.data_on_device is True or (
            self.data_on_device == "auto"
            and isinstance(data, SplitData)
            and fits_on_device(data, self.device)
        )
        return BatchSource(
            data, batch_size, shuffle, self.seed, self.num_workers, role,
            num_replicas=1 if ddp is None else ddp.world_size, rank=0 if ddp is None else ddp.rank,
            device=self.device if on_device else None,
        )  # fmt: skip

    def _training_module(self) -> nn.Module:
        """Return the module forward passes go through: DDP- and/or compile-wrapped as asked."""
        module: nn.Module = self.model
        if self.distributed is not None:
            device_ids = [self.device.index or 0] if self.device.type == "cuda" else None
            module = nn.parallel.DistributedDataParallel(module, device_ids=device_ids)
        if self.compile_model:
            module = torch.compile(module)
        return module

    def _batches(self, source: BatchSource, epoch: int) -> Iterable[dict[str, torch.Tensor]]:
        if source.on_device:  # built on the device already: nothing to prepare ahead
            return source.epoch(epoch)
        return prefetch_batches(
            source.epoch(epoch), self.prefetch, pin_memory=self.device.type == "cuda"
        )

    def _start(
        self,
        resume_from: str | os.PathLike | None,
        prepared: BundleData | None,
        train: Any,
        val: Any,
    ) -> None:
        self.optimizer = self._build_optimizer()
        self.scheduler = self._build_scheduler(self.optimizer)
        self.history, self.epochs_run, self._bad_epochs = [], 0, 0
        self.best_epoch = self.best_loss = None
        self._best_state = self._last_state = self._position = self.resumed_from = None
        self.stop_training = self.interrupted = False
        self._prepared = prepared
        self._training_data = {"train": describe_data(train), "val": describe_data(val)}
        if resume_from is not None:
            self._restore_training_state(resume_from, prepared)

    def _run_epochs(self, train_source: BatchSource, val_source: BatchSource | None) -> None:
        show = sys.stderr.isatty() if self.progress is None else bool(self.progress)
        bar = tqdm(
            range(self.epochs_run, self.epochs), disable=not show, desc="epochs", unit="epoch",
            initial=self.epochs_run, total=self.epochs,
        )  # fmt: skip
        for epoch in bar:
            started = time.perf_counter()
            if hasattr(self.model, "on_epoch_start"):
                self.model.on_epoch_start(epoch)
            row: dict[str, float] = {"epoch": epoch + 1}
            row.update(self._train_epoch(self._batches(train_source, epoch)))
            evaluate = val_source is not None and (
                (epoch + 1) % self.val_every == 0 or epoch + 1 == self.epochs
            )
            if evaluate:
                row.update(self._evaluate(self._batches(val_source, epoch)))
            row["lr"] = float(self.optimizer.param_groups[0]["lr"])
            self.epochs_run = epoch + 1
            monitored = row.get("val_loss") if val_source is not None else row["train_loss"]
            if monitored is not None:
                self._track_best(monitored, epoch + 1)
            self._step_scheduler(monitored)
            row["seconds"] = time.perf_counter() - started
            self.history.append(row)
            bar.set_postfix({k: f"{row[k]:.4g}" for k in ("train_loss", "val_loss") if k in row})
            if self.verbose:
                parts = " ".join(
                    f"{k}={row[k]:.4g}" for k in ("train_loss", "val_loss") if k in row
                )
                tqdm.write(f"epoch {epoch + 1}/{self.epochs}: {parts}", file=sys.stderr)
            for callback in self.callbacks:
                callback.on_epoch_end(self, row)
            patience = self.early_stopping_patience
            if self.stop_training or (
                patience is not None and self._bad_epochs >= max(patience, 1)
            ):
                break
            if self._saves is not None and self.epochs_run < self.epochs:
                self._save_point(None, epoch_end=True)
        bar.close()

    def _train_epoch(self, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        self.model.train()
        position, self._position = self._position, None  # set when resuming mid-epoch
        sums: dict[str, torch.Tensor] = {} if position is None else position["sums"]
        n_cells = 0 if position is None else int(position["n_cells"])
        done = 0 if position is None else int(position["step"])
        for step, batch in enumerate(batches, start=1):
            if step <= done:
                continue  # trained before the state was written: same order, skipped
            if batch["x"].shape[0] == 1 and n_cells > 0:
                continue  # a trailing 1-cell batch breaks BatchNorm; the cell is seen in other epochs
            batch = to_device(batch, self.device)
            with autocast(self.device, self.autocast_dtype):
                loss, stats, _ = self.task.compute_loss(self._forward_model, batch)
            self.optimizer.zero_grad(set_to_none=True)
            self._scaler.scale(loss).backward()
            if self.grad_clip is not None:
                self._scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self._scaler.step(self.optimizer)
            self._scaler.update()
            n = batch["x"].shape[0]
            n_cells += n
            self._accumulate(sums, loss.detach(), stats, n)
            if self._saves is not None:
                self._save_point({"step": step, "sums": sums, "n_cells": n_cells}, epoch_end=False)
        totals, n_cells = self._reduce(sums, n_cells)
        if n_cells == 0:
            msg = "The training data yielded no batches; it is empty."
            raise ValueError(msg)
        return {f"train_{key}": value / n_cells for key, value in totals.items()}

    @staticmethod
    def _accumulate(
        sums: dict[str, torch.Tensor], loss: torch.Tensor, stats: dict[str, torch.Tensor], n: int
    ) -> None:
        for key, value in {"loss": loss, **stats}.items():
            value = value.detach().float() * n
            sums[key] = sums[key] + value if key in sums else value

    def _reduce(self, sums: dict[str, torch.Tensor], n_cells: int) -> tuple[dict[str, float], int]:
        """Per-epoch loss sums as floats (one device sync), summed over ranks under DDP."""
        values = torch.stack(list(sums.values())).cpu().tolist() if sums else []
        totals = dict(zip(sums, values, strict=True))
        if self.distributed is not None:
            totals, n_cells = distributed.sum_across_ranks(totals, n_cells)
        return totals, n_cells

    def _evaluate(self, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        self.model.eval()
        sums: dict[str, torch.Tensor] = {}
        n_cells = 0
        with torch.inference_mode():
            for batch in batches:
                batch = to_device(batch, self.device)
                with autocast(self.device, self.autocast_dtype):
                    loss, stats, _ = self.task.compute_loss(self._forward_model, batch)
                n = batch["x"].shape[0]
                n_cells += n
                self._accumulate(sums, loss, stats, n)
        totals, n_cells = self._reduce(sums, n_cells)
        if n_cells == 0:
            msg = "The validation data yielded no batches; pass val=None instead of an empty split."
            raise ValueError(msg)
        return {f"val_{key}": value / n_cells for key, value in totals.items()}

    def _track_best(self, monitored: float, epoch: int) -> None:
        if self.best_loss is None or monitored < self.best_loss - self.min_delta:
            self.best_loss, self.best_epoch, self._bad_epochs = monitored, epoch, 0
            if self.checkpoint:
                self._best_state = self._copy_state(self._best_state)
        else:
            self._bad_epochs += 1

    def _step_scheduler(self, monitored: float | None) -> None:
        if self.scheduler is None:
            return
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            if monitored is not None:
                self.scheduler.step(monitored)
        else:
            self.scheduler.step()

    def _finish(self) -> None:
        self._last_state = self._copy_state(None)
        self._rng_state = torch.get_rng_state()
        if self.checkpoint and self._best_state is not None:
            self.model.load_state_dict(self._best_state)

    # ------------------------------------------------------------------ inference
    def predict_dataset(
        self,
        data: Any,
        *,
        batch_size: int | None = None,
        include_inputs: bool = True,
        outputs: Collection[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Run the model over ``data`` in batches and concatenate the outputs.

        Parameters
        ----------
        data
            ``SplitData``, a torch ``Dataset`` of per-cell dictionaries, a
            ``DataLoader`` or a list of batch dictionaries (not shuffled).
        batch_size
            Cells per batch (defaults to the trainer's ``batch_size``).
        include_inputs
            Also return ``x`` (and ``y``, ``batch``, ``index`` when present).
        outputs
            Keep only these task outputs (e.g. ``{"latent"}``), so that a large
            reconstruction is never collected; ``None`` keeps all of them.

        Returns
        -------
        Dictionary of numpy arrays in input order: the task's outputs
        (``latent``, ``reconstruction``, ``logits``) plus ``x``, ``y``, ``batch``
        and ``index`` as available.
        """
        source = self._source(
            data, int(batch_size or self.eval_batch_size), shuffle=False, role="predict"
        )
        self.model.eval()
        model = self._inference_module()

        def predict(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            with autocast(self.device, self.autocast_dtype):
                return self.task.predict(model, batch)

        n_cells = len(data) if isinstance(data, Dataset) and hasattr(data, "__len__") else None
        with torch.inference_mode():
            return collect_predictions(
                self._batches(source, 0), predict, device=self.device, n_cells=n_cells,
                outputs=outputs, include_inputs=include_inputs,
            )  # fmt: skip

    def _inference_module(self) -> nn.Module:
        if not self.compile_model:
            return self.model
        if self._compiled_for_inference is None:
            self._compiled_for_inference = torch.compile(self.model)
        return self._compiled_for_inference
