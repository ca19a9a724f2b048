"""Tasks: what a run does with a prompt (classification, generation; speech later), each a registered type.

The pipeline, the artifact loader, the trainer, the CLI and the server dispatch through :data:`TASKS` (keyed by the
name a config's ``task`` and an artifact's ``prompt.json`` carry); nothing asks a model what it is by duck typing.
"""

from __future__ import annotations

from .base import TASKS, Task, check_splits, register_task, task_of, task_type
from .classification import ClassificationTask
from .generation import GenerationTask

__all__ = ["TASKS", "ClassificationTask", "GenerationTask", "Task", "check_splits", "register_task", "task_of", "task_type"]
