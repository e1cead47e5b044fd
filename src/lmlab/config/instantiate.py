"""hydra.utils.instantiate, with the user's input errors shown as themselves."""

from __future__ import annotations

from typing import Any

from lmlab.errors import LmlabError


def instantiate(node: Any, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, but an input error raised by the target reaches the user as itself (Hydra wraps it
    in an InstantiationException, which would print a traceback)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, LmlabError):
            raise cause from None
        if isinstance(cause, TypeError) and "unexpected keyword argument" in str(cause):
            raise LmlabError(f"{err}: remove that key, or check its spelling.") from None
        if type(cause).__name__ == "MisconfigurationException":  # Lightning's word for a bad Trainer argument
            target = node.get("_target_", "") if hasattr(node, "get") else ""
            raise LmlabError(
                f"{cause} (from {target}: check the trainer.* settings, e.g. trainer=cpu on a machine without a GPU)"
            ) from None
        raise
