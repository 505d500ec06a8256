"""kept_modes: every module's train/eval flag comes back as it was, and eval mode inside."""

from __future__ import annotations

from torch import nn

from slimprune._modes import kept_modes


class _CountsTrain(nn.BatchNorm2d):
    """Overrides train(): such a class gets train() called even when the flag holds already."""

    def __init__(self) -> None:
        super().__init__(4)
        self.calls: list[bool] = []

    def train(self, mode: bool = True) -> "_CountsTrain":
        self.calls.append(mode)
        return super().train(mode)


def test_eval_inside_and_a_mixed_model_restored_exactly():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Sequential(nn.ReLU(), nn.BatchNorm2d(4)))
    model.train()
    model[1].eval()  # a frozen norm in a training model
    before = [m.training for m in model.modules()]
    with kept_modes(model, eval=True):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == before
    with kept_modes(model):  # without eval=: the flags are only restored
        assert [m.training for m in model.modules()] == before
        model.eval()
    assert [m.training for m in model.modules()] == before


def test_an_overridden_train_is_called_though_the_model_is_in_eval_mode_already():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), _CountsTrain()).eval()
    model[1].calls.clear()
    with kept_modes(model, eval=True):
        assert model[1].calls == [False] and not model.training
    assert not any(m.training for m in model.modules())
    plain = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).eval()
    with kept_modes(plain, eval=True):
        assert not any(m.training for m in plain.modules())
    assert not any(m.training for m in plain.modules())
