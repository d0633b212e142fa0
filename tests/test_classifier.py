"""fit_classifier and accuracy on tiny synthetic images (no dataset involved)."""

from __future__ import annotations

import pytest
import torch

from genlab.classifier import FeatureNet, Plan, accuracy, cosine_lr, fit_classifier, predict
from genlab.config import TrainConfig
from genlab.errors import UserError
from genlab.trainer import get_lr

FAST = Plan(epochs=6, flips=False, shift=1, batch_size=16, lr=3e-3)


def quadrant_images(n: int, seed: int, side: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images whose class (0..3) says which quadrant holds a bright square."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    images = torch.randint(0, 60, (n, 1, side, side), generator=g)
    half = side // 2
    for i, label in enumerate(labels.tolist()):
        top, left = divmod(label, 2)
        images[i, 0, top * half + 1:top * half + half - 1, left * half + 1:left * half + half - 1] \
            += 180
    return images.to(torch.uint8), labels


def quiet(_: str) -> None:
    pass


def test_fit_learns():
    images, labels = quadrant_images(64, seed=0)
    test_images, test_labels = quadrant_images(40, seed=1)
    state = torch.get_rng_state()
    net = fit_classifier(images, labels, seed=5, plan=FAST, log=quiet)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left alone
    assert isinstance(net, FeatureNet) and not net.training
    assert (net.config.channels, net.config.image_size, net.config.num_classes) == (1, 16, 4)
    assert accuracy(net, test_images, test_labels) >= 0.9
    assert net.meta["fit"] == {"epochs": 6, "chosen_epoch": 6, "validation_accuracy": None}
    assert predict(net, test_images).shape == (40,)
    assert predict(net, test_images).dtype == torch.int64


def test_same_seed_same_weights():
    images, labels = quadrant_images(32, seed=0)
    a, b, c = (fit_classifier(images, labels, seed=seed, plan=FAST, epochs=1, log=quiet)
               for seed in (5, 5, 6))
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert any(not torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())


def test_validation_picks_the_best_epoch():
    images, labels = quadrant_images(64, seed=0)
    val_images, val_labels = quadrant_images(32, seed=2)
    lines: list[str] = []
    net = fit_classifier(images, labels, seed=0, plan=FAST, epochs=4, num_classes=6,
                         validation=(val_images, val_labels), log=lines.append)
    history = net.meta["fit"]["validation_accuracy"]
    assert len(history) == 4 and net.meta["fit"]["epochs"] == 4
    best = max(history)
    assert net.meta["fit"]["chosen_epoch"] == history.index(best) + 1  # the first of equals
    assert accuracy(net, val_images, val_labels) == best  # those weights came back
    assert net.config.num_classes == 6
    assert "validation accuracy" in lines[0] and lines[-1].startswith("kept epoch")


def test_schedule_matches_the_trainers_cosine():
    cfg = TrainConfig(lr=2e-3, lr_schedule="cosine", warmup_steps=20, min_lr_ratio=0.0)
    for step in (0, 5, 19, 20, 21, 100, 199, 250):
        assert cosine_lr(step, 200, 2e-3, 20) == get_lr(step, cfg, 200)  # the same floats


@pytest.mark.parametrize(
    ("images", "labels", "kw", "message"),
    [
        (torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.int64), {}, "uint8"),
        (torch.zeros(4, 1, 8, 6, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64), {},
         r"\(N, C, S, S\)"),
        (torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64), {},
         "4 images need 4 labels"),
        (torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.int32), {},
         "int64"),
        (torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, -1, 0]), {}, ">= 0"),
        (torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 5, 0]),
         {"num_classes": 3}, "covering every label"),
        (torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64), {},
         "num_classes >= 2"),
        (torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]),
         {"validation": (torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]))},
         "give the same size"),
    ],
)
def test_bad_inputs_are_user_errors(images, labels, kw, message):
    with pytest.raises(UserError, match=message):
        fit_classifier(images, labels, plan=FAST, log=quiet, **kw)


def test_accuracy_checks_its_inputs():
    images, labels = quadrant_images(8, seed=0)
    net = fit_classifier(images, labels, plan=FAST, epochs=1, log=quiet)
    with pytest.raises(UserError, match="8 images but 3 labels"):
        accuracy(net, images, labels[:3])
    with pytest.raises(UserError, match=r"\(N, 1, 16, 16\)"):
        accuracy(net, torch.zeros(2, 1, 8, 8, dtype=torch.uint8), labels[:2])
