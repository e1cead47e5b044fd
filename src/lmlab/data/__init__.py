from lmlab.data.datamodule import TextClassificationDataModule

__all__ = ["TextClassificationDataModule"]
