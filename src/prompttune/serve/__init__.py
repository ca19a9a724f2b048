"""Serving: one frozen backbone, many tuned prompts, requests from different tasks batched together.

``engine`` is the Python API (``ServeEngine``: queue, worker, stats); ``tasks`` the registry of task kinds;
``classification`` and ``generation`` the kinds; ``app`` the HTTP service over it (needs the ``serve`` extra).
"""

from .classification import ServedClassification
from .engine import OverloadedError, ServeEngine, TaskConflictError, UnknownTaskError, UnsupportedError
from .generation import ServedGeneration
from .tasks import TASK_KINDS, ServedTask, register_task_kind

__all__ = ["TASK_KINDS", "OverloadedError", "ServeEngine", "ServedClassification", "ServedGeneration", "ServedTask",
           "TaskConflictError", "UnknownTaskError", "UnsupportedError", "register_task_kind"]
