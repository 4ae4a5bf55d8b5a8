"""The ``scdlkit`` console command: train, predict and inspect runs on ``.h5ad``/``.h5mu`` files.

Subcommands::

    scdlkit fit IN.h5ad --model vae -o OUT.h5ad      train (and predict) and write the result
    scdlkit predict IN.h5ad -o OUT.h5ad              write a trained model's outputs
    scdlkit info IN.h5ad                             what scdlkit stored in a file
    scdlkit demo                                     a one-minute run on bundled PBMC data

Exit codes: 0 success, 1 a data/key/file problem (one ``error: ...`` line), 2 a usage
error, 143 (130: Ctrl-C) stopped by SIGTERM with its state written (``--resume`` continues).

A thin front on :func:`scdlkit.tl.fit`/:func:`scdlkit.tl.predict` and
:mod:`scdlkit.data.record`; the package is imported inside the commands, so
``--help`` and ``--version`` answer without loading torch (defaults: ``scdlkit._defaults``).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    DEFAULT_KEY,
    DEFAULT_LR,
    DEFAULT_PATIENCE,
    DEFAULT_SEED,
)
from ._version import __version__

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2

#: Default epochs of ``scdlkit demo`` (well under a minute on two CPU cores); ``scdlkit fit``
#: uses the shared default of every surface (``DEFAULT_EPOCHS``).
DEMO_EPOCHS = 30

#: mudata's notice about a future default of ``update()``: not actionable for CLI users.
_MUDATA_NOTICE = r"From 0\.4 \.update\(\)"


class CLIError(Exception):
    """A problem reported as ``error: <message>`` with exit code 1."""


# --------------------------------------------------------------------------- files


def _is_mudata_path(path: Path) -> bool:
    return path.suffix.lower() == ".h5mu"


def _read(path: str | Path, *, backed: bool = False) -> Any:
    """Read an ``.h5ad`` (AnnData) or ``.h5mu`` (MuData) file."""
    path = Path(path)
    if not path.exists():
        msg = f"input file {str(path)!r} does not exist"
        raise CLIError(msg)
    if path.is_dir():
        msg = f"input {str(path)!r} is a directory, not an .h5ad/.h5mu file"
        raise CLIError(msg)
    if _is_mudata_path(path):
        import mudata

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", _MUDATA_NOTICE, FutureWarning)
            return mudata.read_h5mu(path, backed=backed)
    import anndata

    return anndata.read_h5ad(path, backed="r" if backed else None)


def _write(data: Any, path: str | Path) -> Path:
    """Write ``data`` to ``path``: MuData as ``.h5mu``, AnnData as ``.h5ad``."""
    from mudata import MuData

    path = Path(path)
    is_mudata = isinstance(data, MuData)
    if is_mudata != _is_mudata_path(path):
        kind, suffix = ("MuData", ".h5mu") if is_mudata else ("AnnData", ".h5ad")
        msg = f"the data is a {kind}; write it to a {suffix} file, not {str(path)!r}"
        raise CLIError(msg)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_mudata:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", _MUDATA_NOTICE, FutureWarning)
            data.write(path)
    else:
        data.write_h5ad(path)
    return path


def _check_output(path: str, input_path: str) -> None:
    out, given = Path(path), Path(input_path)
    if _is_mudata_path(out) != _is_mudata_path(given):
        msg = (
            f"output {path!r} and input {input_path!r} must both be .h5ad or both .h5mu "
            "(the file keeps its type)"
        )
        raise CLIError(msg)
    if out.suffix.lower() not in (".h5ad", ".h5mu"):
        msg = f"output {path!r} must end in .h5ad or .h5mu"
        raise CLIError(msg)


# --------------------------------------------------------------------------- run records


def _number(value: Any, fmt: str = ".4g") -> str:
    try:
        return format(float(value), fmt)
    except (TypeError, ValueError):
        return "?"


def _describe_record(where: str, holder: Any, key: str, record: Mapping[str, Any]) -> list[str]:
    from .data.record import present_keys

    history = record.get("history")
    epochs = record.get("epochs_run")
    if epochs is None and isinstance(history, Mapping) and "epoch" in history:
        epochs = len(history["epoch"])
    checkpoint = str(record.get("checkpoint", ""))
    status = "exists" if checkpoint and Path(checkpoint).is_dir() else "MISSING"
    lines = [
        f"{where}.uns[{key!r}]",
        f"  model       {record.get('model', '?')}",
        f"  task        {record.get('task', '?')}",
        f"  version     scdlkit {record.get('version', '?')}",
    ]
    if epochs is not None:
        best = record.get("best_epoch")
        lines.append(
            f"  training    {int(epochs)} epochs; best loss {_number(record.get('best_loss'))}"
            + (f" at epoch {int(best)}" if best is not None else "")
        )
    else:
        lines.append("  training    none recorded (written by predict)")
    if "label_key" in record:
        n_classes = len(record.get("label_categories", []))
        lines.append(f"  labels      {record['label_key']!r} ({n_classes} classes)")
    lines.append(f"  checkpoint  {checkpoint} ({status})")
    present = present_keys(holder, key)
    lines.append(f"  results     {', '.join(present) if present else 'none'}")
    return lines


# --------------------------------------------------------------------------- commands


def _outputs(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        msg = "--outputs is empty; give a comma-separated list such as latent,reconstruction"
        raise CLIError(msg)
    return names


def _written(holder: Any, key: str) -> str:
    """List the keys of run ``key`` that ``holder`` has, for the closing line."""
    from .data.record import present_keys

    present = present_keys(holder, key)
    return ", ".join(present) if present else "nothing"


def _modalities(text: str | None) -> str | list[str] | None:
    """``--mod rna`` is one modality; ``--mod rna,prot`` several, side by side."""
    if text is None or "," not in text:
        return text
    return [name.strip() for name in text.split(",") if name.strip()]


def _cmd_fit(args: argparse.Namespace) -> int:
    import scdlkit

    from .data.record import record_holder

    _check_output(args.output, args.input)
    data = _read(args.input)
    model_kwargs = {} if args.latent_dim is None else {"latent_dim": args.latent_dim}
    checkpoint_dir = args.checkpoint_dir
    if checkpoint_dir is None:
        checkpoint_dir = Path(args.output).resolve().parent / "scdlkit_checkpoints"
    scdlkit.tl.fit(
        data,
        args.model,
        task=args.task,
        layer=args.layer,
        mod=_modalities(args.mod),
        use_raw=args.use_raw,
        label_key=args.label_key,
        batch_key=args.batch_key,
        split_key=args.split_key,
        use_hvg=args.use_hvg,
        normalize=args.normalize,
        log1p=args.log1p,
        scale=args.scale,
        **{
            name: getattr(args, name)
            for name in ("n_top_genes", "val_size", "test_size")
            if getattr(args, name) is not None
        },
        key_added=args.key_added,
        checkpoint_dir=checkpoint_dir,
        model_kwargs=model_kwargs,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        device=args.device,
        seed=args.seed,
        early_stopping_patience=args.early_stopping_patience,
        resume=args.resume_from or args.resume,
        **{
            name: getattr(args, name)
            for name in ("save_every", "save_every_minutes")
            if getattr(args, name) is not None
        },
    )
    if args.predict:
        scdlkit.tl.predict(data, key=args.key_added, mod=_modalities(args.mod), device=args.device)
    if not scdlkit.train.is_main_process():
        return EXIT_OK  # under torchrun, rank 0 writes the file
    path = _write(data, args.output)
    holder = record_holder(data, args.key_added, _modalities(args.mod))
    record = holder.uns[args.key_added]
    print(
        f"trained {record.get('model')} ({record.get('task')}) for {record.get('epochs_run')} "
        f"epochs; best loss {_number(record.get('best_loss'))} at epoch {record.get('best_epoch')}"
    )
    print(f"checkpoint: {record.get('checkpoint')}")
    print(f"wrote {path} ({_written(holder, args.key_added)})")
    return EXIT_OK


def _cmd_predict(args: argparse.Namespace) -> int:
    import scdlkit

    from .data.record import record_holder

    _check_output(args.output, args.input)
    data = _read(args.input)
    options: dict[str, Any] = {}
    if args.mod is not None:
        options["mod"] = _modalities(args.mod)
    scdlkit.tl.predict(
        data,
        key=args.key,
        checkpoint=args.checkpoint,
        outputs=_outputs(args.outputs),
        batch_size=args.batch_size,
        device=args.device,
        key_added=args.key_added,
        **options,
    )
    path = _write(data, args.output)
    prefix = args.key_added or args.key
    print(f"wrote {path} ({_written(record_holder(data, prefix, _modalities(args.mod)), prefix)})")
    return EXIT_OK


def _cmd_info(args: argparse.Namespace) -> int:
    from .data.record import find_records

    data = _read(args.input, backed=True)
    try:
        records = find_records(data)
        kind = type(data).__name__
        print(f"{args.input}: {kind} with {data.n_obs} cells x {data.n_vars} features")
        if not records:
            print("no scdlkit runs recorded (run `scdlkit fit` or scdlkit.tl.fit first)")
            return EXIT_OK
        for where, holder, key in records:
            print()
            print("\n".join(_describe_record(where, holder, key, holder.uns[key])))
    finally:
        file = getattr(data, "file", None)
        if file is not None:
            file.close()
    return EXIT_OK


def _held_out_knn_accuracy(adata: Any, key: str, label_key: str) -> float | None:
    """Return the kNN accuracy on the test cells, learnt from the training cells (``None``: no split)."""
    import numpy as np

    from .data.record import SPLIT_KEY, latent_key
    from .evaluation import knn_accuracy

    split = adata.obs.get(SPLIT_KEY.format(key=key))
    if split is None:
        return None
    split = split.astype(str).to_numpy()
    train, test = split == "train", split == "test"
    if not train.any() or not test.any():
        return None
    latent = np.asarray(adata.obsm[latent_key(key)])
    labels = adata.obs[label_key].astype(str).to_numpy()
    return knn_accuracy(
        latent[test], labels[test], reference_latent=latent[train], reference_labels=labels[train]
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    import scdlkit

    from ._threads import keep_torch_threads

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    label_key = "bulk_labels"
    adata = scdlkit.datasets.pbmc68k_reduced()
    scdlkit.tl.fit(
        adata,
        "vae",
        use_raw=True,
        label_key=label_key,
        epochs=args.epochs,
        batch_size=128,
        seed=args.seed,
        checkpoint_dir=out_dir / "checkpoints",
    )
    scdlkit.tl.predict(adata)
    with keep_torch_threads():
        sc.pp.neighbors(adata, use_rep="X_scdlkit", random_state=args.seed)
        sc.tl.umap(adata, random_state=args.seed)

    data_path = _write(adata, out_dir / "pbmc68k_scdlkit.h5ad")
    umap_path = out_dir / "umap_bulk_labels.png"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # scanpy's, not ours
        ax = sc.pl.umap(adata, color=label_key, show=False, title="scdlkit VAE latent space")
    ax.figure.savefig(umap_path, bbox_inches="tight", dpi=120)
    plt.close(ax.figure)
    history_path = out_dir / "loss_history.png"
    fig = scdlkit.pl.history(adata, show=False, save=history_path, return_fig=True)
    plt.close(fig)

    record = adata.uns[DEFAULT_KEY]
    accuracy = _held_out_knn_accuracy(adata, DEFAULT_KEY, label_key)
    print(f"data:         {data_path}")
    print(f"UMAP:         {umap_path}")
    print(f"loss curves:  {history_path}")
    print(f"checkpoint:   {record['checkpoint']}")
    print()
    knn = (
        ""
        if accuracy is None
        else f" A 15-nearest-neighbour classifier in the latent space recovers the "
        f"{label_key!r} labels of the held-out test cells with accuracy {accuracy:.2f}."
    )
    print(
        f"Trained a VAE ({record['model_config'].get('latent_dim', '?')}-dimensional latent "
        f"space) on the log-normalised values (adata.raw) of {adata.n_obs} PBMCs x "
        f"{adata.raw.n_vars} genes for {record['epochs_run']} epochs; the best validation "
        f"loss was {_number(record['best_loss'])} at epoch {record['best_epoch']}. The latent "
        f"space is in adata.obsm['X_scdlkit'], the reconstruction in "
        f"adata.layers['scdlkit_reconstruction'], and the UMAP was computed on the latent "
        f"space.{knn}"
    )
    return EXIT_OK


# --------------------------------------------------------------------------- parser


class _HelpFormatter(argparse.HelpFormatter):
    """Append ``(default: X)`` to the help of options whose default is a value."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        unset = action.default is None or action.default is False
        if text and action.option_strings and not unset and action.default is not argparse.SUPPRESS:
            text += " (default: %(default)s)"
        return text


def _add_io(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN", help="input .h5ad (or .h5mu) file")
    parser.add_argument(
        "-o", "--output", metavar="OUT", required=True, help="output .h5ad (or .h5mu) file"
    )


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``scdlkit`` command.

    Returns
    -------
    The parser; :func:`main` runs it.

    Examples
    --------
    >>> parser = build_parser()
    >>> parser.parse_args(["info", "data.h5ad"]).command
    'info'
    """
    parser = argparse.ArgumentParser(
        prog="scdlkit",
        description="Deep-learning models for single-cell data in .h5ad/.h5mu files.",
    )
    parser.add_argument("--version", action="version", version=f"scdlkit {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log progress (scanpy verbosity 'info')"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    fit = sub.add_parser(
        "fit",
        help="train a model and write the annotated file",
        description="Train a model (scdlkit.tl.fit) and write its outputs (scdlkit.tl.predict).",
        formatter_class=_HelpFormatter,
    )
    _add_io(fit)
    fit.add_argument("--model", required=True, help="registry name: vae, autoencoder, ...")
    fit.add_argument("--task", help="representation, reconstruction or classification")
    fit.add_argument("--layer", help="layer to train on (none: .X)")
    fit.add_argument("--mod", help="MuData modality to train on (rna,prot: several)")
    fit.add_argument("--use-raw", action="store_true", help="train on .raw.X")
    fit.add_argument("--label-key", help=".obs column with cell labels")
    fit.add_argument("--batch-key", help=".obs column with batches")
    fit.add_argument("--split-key", help=".obs column with train/val/test")
    fit.add_argument("--normalize", action="store_true", help="normalise total counts per cell")
    fit.add_argument("--log1p", action="store_true", help="apply log(1 + x)")
    fit.add_argument("--scale", action="store_true", help="z-score every feature")
    fit.add_argument("--use-hvg", action="store_true", help="keep highly variable genes only")
    for flag, kind, metavar, text in (
        ("--n-top-genes", int, "N", "highly variable genes kept with --use-hvg"),
        ("--val-size", float, "X", "share of cells for validation"),
        ("--test-size", float, "X", "share of cells held out for testing"),
    ):  # left out: scdlkit.tl.fit's defaults apply
        fit.add_argument(
            flag, type=kind, metavar=metavar, help=f"{text} (default: as scdlkit.tl.fit)"
        )
    fit.add_argument(
        "--epochs",
        type=int,
        default=DEFAULT_EPOCHS,
        metavar="N",
        help="most epochs; training stops earlier (see --patience)",
    )
    fit.add_argument(
        "--patience",
        dest="early_stopping_patience",
        type=int,
        default=DEFAULT_PATIENCE,
        metavar="N",
        help="stop when the validation loss has not improved for N epochs",
    )
    fit.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N", help="cells per step"
    )
    fit.add_argument("--lr", type=float, default=DEFAULT_LR, metavar="X", help="learning rate")
    fit.add_argument("--latent-dim", type=int, metavar="N", help="latent dimensions of the model")
    fit.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, metavar="N", help="seed of split and training"
    )
    fit.add_argument("--device", default="auto", help="auto, cpu, cuda, mps, ...")
    fit.add_argument("--key-added", default=DEFAULT_KEY, metavar="KEY", help="prefix of the keys")
    fit.add_argument(
        "--checkpoint-dir",
        metavar="DIR",
        help="parent folder of the checkpoint (none: scdlkit_checkpoints beside OUT)",
    )
    fit.add_argument(
        "--save-every",
        type=int,
        metavar="N",
        help="write the training state every N epochs, so that a killed run can be resumed",
    )
    fit.add_argument(
        "--save-every-minutes",
        type=float,
        metavar="M",
        help="also write it after any step once M minutes have passed since the last write",
    )
    fit.add_argument(
        "--resume",
        action="store_true",
        help="continue the newest stopped run of --key-added in --checkpoint-dir "
        "(a new run starts when none stopped)",
    )
    fit.add_argument(
        "--resume-from", metavar="PATH", help="continue the run folder, state or bundle at PATH"
    )
    fit.add_argument(
        "--predict",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write the model's outputs after training",
    )
    fit.set_defaults(func=_cmd_fit)

    predict = sub.add_parser(
        "predict",
        help="write a trained model's outputs",
        description="Run a trained model over every cell and write its outputs.",
    )
    _add_io(predict)
    predict.add_argument("--checkpoint", metavar="DIR", help="checkpoint to use (a query dataset)")
    predict.add_argument("--key", default=DEFAULT_KEY, help="key_added of the fit run")
    predict.add_argument("--key-added", metavar="KEY", help="prefix of the written keys")
    predict.add_argument(
        "--outputs", help="comma-separated: latent,reconstruction,logits,probabilities,prediction"
    )
    predict.add_argument("--mod", help="MuData modality (default: the one trained on)")
    predict.add_argument("--batch-size", type=int, default=1024, metavar="N")
    predict.add_argument("--device", default="auto")
    predict.set_defaults(func=_cmd_predict)

    info = sub.add_parser(
        "info", help="show what scdlkit stored in a file", description="Show scdlkit runs."
    )
    info.add_argument("input", metavar="IN", help=".h5ad or .h5mu file")
    info.set_defaults(func=_cmd_info)

    demo = sub.add_parser(
        "demo",
        help="train a VAE on bundled PBMC data and write plots",
        description="Train a VAE on scanpy's bundled pbmc68k_reduced and write the results.",
    )
    demo.add_argument("--epochs", type=int, default=DEMO_EPOCHS, metavar="N")
    demo.add_argument("--seed", type=int, default=DEFAULT_SEED, metavar="N")
    demo.add_argument("--out-dir", default="scdlkit_demo", metavar="DIR")
    demo.set_defaults(func=_cmd_demo)
    return parser


def _message(error: BaseException) -> str:
    if isinstance(error, KeyError) and type(error).__str__ is KeyError.__str__ and error.args:
        text = str(error.args[0])
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``scdlkit`` command.

    Parameters
    ----------
    argv
        Arguments without the program name; ``None`` reads ``sys.argv``.

    Returns
    -------
    The exit code: 0 on success, 1 for data, key and file errors (reported as
    one ``error: ...`` line on standard error), 2 for usage errors.

    Examples
    --------
    >>> import scdlkit
    >>> scdlkit.datasets.pbmc68k_reduced().write_h5ad("pbmc.h5ad")
    >>> main(["info", "pbmc.h5ad"])
    pbmc.h5ad: AnnData with 700 cells x 765 features
    no scdlkit runs recorded (run `scdlkit fit` or scdlkit.tl.fit first)
    0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if args.verbose:
        import scanpy as sc

        sc.settings.verbosity = "info"
    from .train.preemption import TrainingInterrupted

    try:
        return args.func(args)
    except TrainingInterrupted as stopped:
        hint = "Resume with the same command and --resume."
        sys.stderr.write(f"{stopped.with_hint(hint)}\n")
        return stopped.exit_code
    except (CLIError, KeyError, ValueError, TypeError, OSError) as error:
        sys.stderr.write(f"error: {_message(error)}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
