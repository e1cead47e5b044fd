"""Tasks: everything task-specific lives here (see base.py for the interface train.py and eval.py use)."""

from lmlab.tasks.base import Task
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
    "TextClassifier",
]
