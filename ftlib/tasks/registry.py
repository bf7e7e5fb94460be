"""Every task by name: what ``ftlib-predict`` and the other shared steps look a run's task up in."""

from __future__ import annotations

from ftlib.tasks.base import Task
from ftlib.tasks.causal_lm import TASK as CAUSAL_LM
from ftlib.tasks.image_classification import TASK as IMAGE
from ftlib.tasks.object_detection import TASK as DETECTION
from ftlib.tasks.semantic_segmentation import TASK as SEGMENTATION
from ftlib.tasks.text_classification import TASK as TEXT
from ftlib.tasks.token_classification import TASK as TOKEN

TASKS: dict[str, Task] = {task.name: task for task in (TEXT, IMAGE, TOKEN, CAUSAL_LM, DETECTION, SEGMENTATION)}
