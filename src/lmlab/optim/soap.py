"""optimizer=soap: heavyball's SOAP (Adam in Shampoo's eigenbasis), eager by default.

heavyball compiles its update functions with torch.compile (mode `max-autotune-no-cudagraphs`) unless its module
setting `heavyball.utils.compile_mode` is None: on a CPU the first step then autotunes for minutes (131 s for a
3-layer toy here), so lmlab runs it eagerly unless `compile_mode` is set (e.g. on a GPU). heavyball's `use_default`
sentinels are spelled out with the values they stand for, so the YAML lists every argument with a plain value.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lmlab.errors import LmlabError


class SOAP:
    """`heavyball.SOAP(params, ...)`, with heavyball's compile mode set first (a process-wide heavyball setting)."""

    def __new__(
        cls,
        params: Iterable[Any],
        lr: float = 3e-3,
        betas: tuple[float, float] = (0.9, 0.95),
        shampoo_beta: float = 0.95,
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        cautious_weight_decay: bool = False,
        precondition_frequency: int = 2,
        max_precond_dim: int = 2048,
        merge_dims: bool = True,
        precondition_1d: bool = False,
        warmup_steps: int = 0,
        split: bool = False,
        multi_tensor: bool = True,
        mars: bool = False,
        caution: bool = False,
        mars_gamma: float = 0.0025,
        palm: bool = False,
        precond_scheduler: tuple[float, float] = (1 / 3, 9),
        beta2_scale: float = 0.8,
        use_precond_schedule: bool = False,
        gradient_clipping: str | None = None,
        update_clipping: str | None = None,
        storage_dtype: str = "float32",
        precond_grad_accum: bool = False,
        compile_step: bool = False,
        promote: bool = False,
        ecc: str | None = None,
        param_ecc: str | None = None,
        compile_mode: str | None = None,
    ) -> Any:
        try:
            import heavyball
        except ImportError as error:
            raise LmlabError(
                f"optimizer=soap needs the heavyball package (Python >= 3.11): pip install 'heavyball>=3.2.1,<4' "
                f"({error})."
            ) from error
        heavyball.utils.compile_mode = compile_mode
        args = dict(locals())
        for name in ("cls", "params", "heavyball", "compile_mode"):
            args.pop(name)
        args["betas"] = tuple(betas)
        args["precond_scheduler"] = tuple(precond_scheduler)
        return heavyball.SOAP(params, **args)
