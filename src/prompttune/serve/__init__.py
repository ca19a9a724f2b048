"""Serving: one frozen backbone, many tuned prompts, requests from different tasks batched together.

``engine`` is the Python API (``ServeEngine``); ``generation`` adds generation tasks to it; ``app`` is the HTTP
service over it (needs the ``serve`` extra).
"""

from .engine import (TASK_KINDS, ClassificationTask, OverloadedError, ServedTask, ServeEngine, TaskConflictError,
                     UnknownTaskError, UnsupportedError, register_task_kind)
from .generation import GenerationServedTask

__all__ = ["TASK_KINDS", "ClassificationTask", "GenerationServedTask", "OverloadedError", "ServeEngine", "ServedTask",
           "TaskConflictError", "UnknownTaskError", "UnsupportedError", "register_task_kind"]
