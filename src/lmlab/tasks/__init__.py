"""Tasks: everything task-specific lives here (base.py holds the contract train.py, eval.py and the rest call)."""

from lmlab.tasks.base import Task, TaskModule
from lmlab.tasks.classification import ClassificationTask, TextClassifier
from lmlab.tasks.language_modeling import CausalLM, CausalLMTask
from lmlab.tasks.masked_lm import MaskedLM, MaskedLMTask
from lmlab.tasks.multitask import MultiTask, MultiTaskClassifier

__all__ = [
    "CausalLM",
    "CausalLMTask",
    "ClassificationTask",
    "MaskedLM",
    "MaskedLMTask",
    "MultiTask",
    "MultiTaskClassifier",
    "Task",
    "TaskModule",
    "TextClassifier",
]
