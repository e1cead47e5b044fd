"""Backbone loading (pretrained, GGUF, random init); the task modules live in lmlab.tasks."""

from lmlab.models.backbone import load_backbone

__all__ = ["load_backbone"]
