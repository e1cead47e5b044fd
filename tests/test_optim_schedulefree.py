"""optimizer=schedulefree: validation, checkpoints and the end of fit see the eval-mode (averaged) weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import schedulefree
import torch
from omegaconf import OmegaConf

from lmlab.callbacks.schedule_free import ScheduleFreeModes
from lmlab.errors import LmlabError
from lmlab.optim import lightning_optimizers
from tests.conftest import ROOT

SF = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "optimizer" / "schedulefree.yaml"))
BETA1 = 0.9


class Regression(pl.LightningModule):
    """A linear model; records, at every validation, its weights and loss, and the train-mode weights y (and the
    optimizer's z) as they were after the last training step before it."""

    def __init__(self, callbacks: pl.Callback | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = torch.nn.Linear(4, 4)
        self.head = torch.nn.Linear(4, 1)
        self.data = torch.randn(64, 4), torch.randn(64, 1)
        self.with_callbacks = callbacks
        self.validations: list[dict] = []
        self.last_train: dict = {}

    def loss(self) -> torch.Tensor:
        x, y = self.data
        return torch.nn.functional.mse_loss(self.head(self.backbone(x)), y)

    def training_step(self, batch, idx):
        return self.loss()

    def on_train_batch_end(self, outputs, batch, idx) -> None:
        state = self.trainer.optimizers[0].state
        self.last_train = {
            n: (p.detach().clone(), state[p]["z"].clone()) for n, p in self.named_parameters() if "z" in state[p]
        }

    def validation_step(self, batch, idx) -> None:
        loss = self.loss()
        self.log("val/loss", loss, batch_size=1)
        weights = {n: p.detach().clone() for n, p in self.named_parameters()}
        self.validations.append({"loss": float(loss), "weights": weights, "y_z": self.last_train})

    def train_dataloader(self):
        return [0] * 4

    def val_dataloader(self):
        return [0]

    def configure_callbacks(self):
        return [self.with_callbacks] if self.with_callbacks else []

    def configure_optimizers(self):
        cfg = {**SF, "lr": 0.05, "weight_decay": 0.01}
        return lightning_optimizers(self.backbone, self.head, cfg, {"name": "none"}, 8)


def fit(tmp_path: Path, callbacks: pl.Callback | str | None = "default") -> tuple[Regression, pl.Trainer]:
    callbacks = ScheduleFreeModes() if callbacks == "default" else callbacks
    module = Regression(callbacks)
    trainer = pl.Trainer(
        max_epochs=2,
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[
            pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, monitor="val/loss", save_top_k=-1)
        ],
    )
    trainer.fit(module)
    return module, trainer


def eval_weights(y_z: dict) -> dict:
    """x from y and z by hand: y = (1 - beta1) z + beta1 x."""
    return {n: (y - (1 - BETA1) * z) / BETA1 for n, (y, z) in y_z.items()}


def test_validation_sees_the_eval_mode_weights_and_loss(tmp_path: Path) -> None:
    module, trainer = fit(tmp_path)
    assert len(module.validations) == 2
    for seen in module.validations:
        expected = eval_weights(seen["y_z"])
        for name, weight in seen["weights"].items():
            torch.testing.assert_close(weight, expected[name], rtol=1e-5, atol=1e-6)
            assert not torch.equal(weight, seen["y_z"][name][0]), f"{name}: validated on the train-mode weights"
        # The loss validation logged is the loss of the eval-mode weights, computed by hand.
        with torch.no_grad():
            x, y = module.data
            hand = torch.nn.functional.linear(
                torch.nn.functional.linear(x, expected["backbone.weight"], expected["backbone.bias"]),
                expected["head.weight"],
                expected["head.bias"],
            )
        assert seen["loss"] == pytest.approx(float(torch.nn.functional.mse_loss(hand, y)), rel=1e-5)
    # The end of fit (test, export) and the checkpoints hold the eval-mode weights, marked so in the optimizer state.
    optimizer = trainer.optimizers[0]
    assert not any(g["train_mode"] for g in optimizer.param_groups)
    for path in (tmp_path / "ckpt").glob("*.ckpt"):
        checkpoint = torch.load(path, weights_only=False)
        assert not any(g["train_mode"] for g in checkpoint["optimizer_states"][0]["param_groups"])
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    for name, weight in module.validations[-1]["weights"].items():
        assert torch.equal(last["state_dict"][name], weight)


class TrainOnly(ScheduleFreeModes):
    """A broken callback: switches to train mode for the steps, never back to eval mode."""

    def on_validation_start(self, trainer, pl_module) -> None:
        pass

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        pass

    def on_train_end(self, trainer, pl_module) -> None:
        pass


def test_the_check_has_teeth_without_eval_or_without_any_switching(tmp_path: Path) -> None:
    module, _ = fit(tmp_path / "train_only", callbacks=TrainOnly())
    seen = module.validations[0]
    assert all(torch.equal(w, seen["y_z"][n][0]) for n, w in seen["weights"].items())  # validated on y: wrong
    with pytest.raises(Exception, match="not in train mode"):  # no switching at all: the optimizer refuses to step
        fit(tmp_path / "none", callbacks=None)


def test_resume_from_an_epoch_checkpoint_is_bitwise(tmp_path: Path) -> None:
    straight, _ = fit(tmp_path / "straight")
    module = Regression(ScheduleFreeModes())
    trainer = pl.Trainer(
        max_epochs=2,
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    first = tmp_path / "straight" / "ckpt" / "epoch=0-step=4.ckpt"
    trainer.fit(module, ckpt_path=first)
    for name, weight in straight.named_parameters():
        assert torch.equal(weight, dict(module.named_parameters())[name]), name


@pytest.mark.parametrize("name", ["linear", "cosine", "plateau"])
def test_a_decaying_schedule_is_refused(name: str) -> None:
    layer = torch.nn.Linear(2, 2)
    with pytest.raises(LmlabError, match="scheduler=constant_warmup"):
        lightning_optimizers(layer, torch.nn.ModuleList(), SF, {"name": name, "warmup": 0.1}, 10)
    built = lightning_optimizers(layer, torch.nn.ModuleList(), SF, {"name": "constant_warmup", "warmup": 0.1}, 10)
    assert isinstance(built["optimizer"], schedulefree.AdamWScheduleFree)
