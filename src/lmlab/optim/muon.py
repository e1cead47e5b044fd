"""Muon on the hidden weight matrices and AdamW on everything else, as ONE torch optimizer.

Lightning's automatic optimization takes one optimizer, and the lr scheduler, gradient clipping and the lr monitor
must see every parameter group: `MuonWithAdamW` holds both kinds of group in its own `param_groups` (a group's
`use_muon` says which) and one `state`, and lets a `torch.optim.Muon` and a `torch.optim.AdamW` that share those very
group dicts and that state do the arithmetic. Its `state_dict()` is torch's (all groups, one state), so a resume
restores both halves bitwise.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from lmlab.errors import LmlabError

log = logging.getLogger("lmlab.optim")

# The arguments of torch.optim.Muon (minus params) that a Muon-side group carries.
MUON_ARGS = ("momentum", "nesterov", "ns_coefficients", "eps", "ns_steps", "adjust_lr_fn")


def embedding_params(module: nn.Module) -> set[int]:
    """ids of the parameters that belong to embedding tables (token, position, type embeddings)."""
    return {id(p) for m in module.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)}


def is_hidden_matrix(param: nn.Parameter, embeddings: set[int]) -> bool:
    """What Muon optimizes: a 2-D backbone weight that is not an embedding table (the head is never one)."""
    return param.ndim == 2 and id(param) not in embeddings


def summarize(names: Iterable[str]) -> str:
    """`model.layers.*.mlp.up_proj.weight` once for all layers: the log says which kinds of tensor went where."""
    return ", ".join(dict.fromkeys(re.sub(r"\.\d+\.", ".*.", n) for n in names)) or "-"


def check_not_flat(params: Iterable[nn.Parameter]) -> None:
    """FSDP hands the optimizer flat 1-D shards: there is no matrix left to orthogonalize."""
    if any(type(p).__name__ == "FlatParameter" for p in params):
        raise LmlabError(
            "optimizer=muon needs the 2-D weight matrices, but FSDP flattens them into 1-D shards "
            "(trainer=fsdp). Use trainer=ddp (or one device) with Muon, or optimizer=adamw with FSDP."
        )


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer: groups with `use_muon=True` are stepped by torch.optim.Muon, the others by AdamW.

    `params` are parameter groups, each with `use_muon`; a group's own lr/weight_decay win over the defaults (the
    AdamW side's defaults are `adamw_*`). `lr`, `weight_decay` and the Muon arguments are Muon's."""

    def __init__(
        self,
        params: Iterable[dict[str, Any]],
        lr: float = 3e-3,
        weight_decay: float = 0.01,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_coefficients: tuple[float, float, float] = (3.4445, -4.775, 2.0315),
        eps: float = 1e-7,
        ns_steps: int = 5,
        adjust_lr_fn: str | None = "match_rms_adamw",
        adamw_lr: float | None = None,
        adamw_weight_decay: float | None = None,
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-8,
    ) -> None:
        groups = [dict(g) for g in params]
        muon_groups = [g for g in groups if g.get("use_muon")]
        adamw_groups = [g for g in groups if not g.get("use_muon")]
        if not muon_groups:
            raise LmlabError(
                "optimizer=muon found no trainable 2-D hidden weight matrix to orthogonalize (embeddings, the head, "
                "norms and biases go to its AdamW side). Train the model's hidden layers, or use optimizer=adamw. "
                "(With trainer=fsdp the matrices reach the optimizer flattened into 1-D shards: use trainer=ddp.)"
            )
        check_not_flat(p for g in groups for p in g["params"])
        muon_defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                             ns_coefficients=tuple(ns_coefficients), eps=eps, ns_steps=ns_steps,
                             adjust_lr_fn=adjust_lr_fn)  # fmt: skip
        adamw_defaults = dict(
            lr=lr if adamw_lr is None else adamw_lr,
            weight_decay=weight_decay if adamw_weight_decay is None else adamw_weight_decay,
            betas=tuple(adamw_betas),
            eps=adamw_eps,
        )
        # The inner optimizers fill their defaults into the group dicts (setdefault); `self` then holds the same dicts.
        self._muon = torch.optim.Muon(muon_groups, **muon_defaults)
        self._adamw = torch.optim.AdamW(adamw_groups, **adamw_defaults) if adamw_groups else None
        super().__init__(groups, {})
        # What the config asked for (the groups carry the values in force); tests and loggers read `defaults["lr"]`.
        self.defaults = {**muon_defaults, **{f"adamw_{k}": v for k, v in adamw_defaults.items()}}
        self._link()

    def _link(self) -> None:
        """Point the inner optimizers at this optimizer's groups and state (again after load_state_dict)."""
        self._muon.param_groups = [g for g in self.param_groups if g["use_muon"]]
        self._muon.state = self.state
        if self._adamw is not None:
            self._adamw.param_groups = [g for g in self.param_groups if not g["use_muon"]]
            self._adamw.state = self.state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._link()

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._muon.step()
        if self._adamw is not None:
            self._adamw.step()
        return loss
