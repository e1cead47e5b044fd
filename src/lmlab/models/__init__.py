from lmlab.models.classifier import TextClassifier

__all__ = ["TextClassifier"]
