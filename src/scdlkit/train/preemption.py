"""Preemption: turn SIGTERM and Ctrl-C into "finish the step, write the state, stop".

Cluster schedulers end a job that runs out of time with SIGTERM (and SIGKILL a
grace period later); ``torchrun`` forwards it to every rank. While a
:class:`~scdlkit.Trainer` with a ``state_dir`` trains, :class:`StopSignals`
records the signal instead of dying; the loop finishes the current step,
writes its state and raises :class:`TrainingInterrupted` with the command to
resume. A second Ctrl-C stops at once (without writing a state).
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from tqdm.auto import tqdm

#: Signals handled while training.
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(SystemExit):  # noqa: N818 - named for what the user sees
    """Training stopped on SIGTERM or Ctrl-C after writing its state.

    A :class:`SystemExit`: left uncaught it ends the program with its message
    (exit status 1); ``scdlkit fit`` exits with :attr:`exit_code` instead.

    Attributes
    ----------
    message
        What happened and how to resume.
    state
        The state written (``None`` on ranks other than 0, which do not write).
    signal_name
        ``"SIGTERM"`` or ``"SIGINT"``.
    """

    def __init__(self, what: str, hint: str, *, state: Path | None, signal_name: str) -> None:
        self.message = f"{what} {hint}"
        super().__init__(self.message)
        self.what, self.hint = what, hint
        self.state = state
        self.signal_name = signal_name

    def __str__(self) -> str:
        return self.message

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by the signal: ``128 + signal number``."""
        return 128 + int(signal.Signals[self.signal_name])

    def with_hint(self, hint: str) -> TrainingInterrupted:
        """Return the same interruption with ``hint`` (how to resume) in place of the Trainer's."""
        return TrainingInterrupted(self.what, hint, state=self.state, signal_name=self.signal_name)


class StopSignals:
    """While active, record SIGTERM and the first Ctrl-C instead of stopping the process.

    Handlers are installed only in the main thread (Python delivers signals
    there) and the previous ones are restored on exit.

    Parameters
    ----------
    enabled
        Install the handlers (``False``: a no-op, signals behave as usual).

    Examples
    --------
    >>> with StopSignals(enabled=True) as signals:
    ...     signals.received is None
    True
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if self.enabled:
            for number in SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _handle(self, number: int, frame: FrameType | None) -> None:
        name = signal.Signals(number).name
        if self.received is not None:
            if number == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a state
            return
        self.received = name
        tqdm.write(
            f"{name} received: finishing the current step and saving the training state "
            "(press Ctrl-C again to stop at once, without saving).",
            file=sys.stderr,
        )
