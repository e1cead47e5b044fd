"""lmlab: Hydra + PyTorch Lightning experiments for language-model optimization."""

__version__ = "0.1.0"
