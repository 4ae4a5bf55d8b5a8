"""The task registry: task names -> shared task instances."""

from __future__ import annotations

import difflib
from typing import TypeVar

import pandas as pd

from .._errors import format_names
from .annotation import AnnotationTask
from .base import Task
from .classification import ClassificationTask
from .reconstruction import ReconstructionTask
from .representation import RepresentationTask

TaskLike = TypeVar("TaskLike", Task, type[Task])

_TASKS: dict[str, Task] = {}


def register_task(task: TaskLike, *, overwrite: bool = False) -> TaskLike:
    """Register a task (an instance, or a class that is instantiated without arguments).

    Usable as a class decorator. The task's ``name`` becomes its registry name.

    Parameters
    ----------
    task
        A :class:`~scdlkit.tasks.Task` instance or subclass.
    overwrite
        Replace a different task already registered under the same name.

    Returns
    -------
    ``task`` unchanged.

    Raises
    ------
    ValueError
        Not a ``Task``, an empty name, or a name taken by another task type
        without ``overwrite``.

    Examples
    --------
    >>> from scdlkit.tasks import ReconstructionTask, get_task, register_task
    >>> @register_task
    ... class Denoise(ReconstructionTask):
    ...     name = "denoise_doc"
    ...     description = "Reconstruction under another name."
    >>> get_task("denoise_doc")
    Denoise(name='denoise_doc')
    """
    instance = task() if isinstance(task, type) and issubclass(task, Task) else task
    if not isinstance(instance, Task):
        msg = f"register_task needs a scdlkit.tasks.Task instance or subclass, got {task!r}."
        raise ValueError(msg)
    name = instance.name
    if not isinstance(name, str) or not name:
        msg = f"{type(instance).__name__} has no name; set a class attribute name = '...'."
        raise ValueError(msg)
    existing = _TASKS.get(name)
    if existing is not None and type(existing) is not type(instance) and not overwrite:
        msg = (
            f"A task named {name!r} is already registered ({type(existing).__qualname__}). "
            "Choose another name or pass overwrite=True."
        )
        raise ValueError(msg)
    _TASKS[name] = instance
    return task


def get_task(task: str | Task) -> Task:
    """Look up a task by name; task instances pass through unchanged.

    Parameters
    ----------
    task
        ``"representation"``, ``"reconstruction"``, ``"classification"``, a
        registered name, or a :class:`~scdlkit.tasks.Task` instance.

    Returns
    -------
    The task instance.

    Raises
    ------
    ValueError
        Unknown name; the message lists the registered tasks.
    TypeError
        Neither a string nor a ``Task``.

    Examples
    --------
    >>> get_task("classification").output_keys
    ('logits', 'latent')
    """
    if isinstance(task, Task):
        return task
    if isinstance(task, type) and issubclass(task, Task):
        return task()
    if not isinstance(task, str):
        msg = f"task must be a task name or a scdlkit.tasks.Task instance, got {task!r}."
        raise TypeError(msg)
    if task in _TASKS:
        return _TASKS[task]
    close = difflib.get_close_matches(task, list(_TASKS), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    msg = f"Unknown task {task!r}.{hint} Registered tasks: {format_names(sorted(_TASKS))}."
    raise ValueError(msg)


def list_tasks() -> pd.DataFrame:
    """List the registered tasks, one row each.

    Returns
    -------
    DataFrame with columns ``name``, ``output_keys``, ``required_batch_keys`` and
    ``description``, sorted by name.

    Examples
    --------
    >>> list_tasks()["name"].tolist()[:4]
    ['annotation', 'classification', 'reconstruction', 'representation']
    """
    rows = [
        {
            "name": name,
            "output_keys": tuple(task.output_keys),
            "required_batch_keys": tuple(task.required_batch_keys),
            "description": task.description,
        }
        for name, task in sorted(_TASKS.items())
    ]
    return pd.DataFrame(rows, columns=["name", "output_keys", "required_batch_keys", "description"])


for _task in (RepresentationTask, ReconstructionTask, ClassificationTask, AnnotationTask):
    register_task(_task)
