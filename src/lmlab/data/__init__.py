from lmlab.data.datamodule import TextDataModule

__all__ = ["TextDataModule"]
