"""The training loop's recipe against the official code, LDAM-DRW's loss, and bit-for-bit resume (tiny synthetic
runs on the CPU, a few seconds)."""
import math

import numpy as np
import pytest
import torch

from train import fit
from train.model import NormedLinear, ProCoResNet32


def official_adjust_lr(epoch, epochs, lr=0.3):
    """ProCo_cifar/main.py adjust_lr + the schedule it sets in main_worker (written out independently)."""
    if epochs == 200:
        milestones, warm = [160, 180], 5
    else:
        milestones, warm = [epochs * 0.8, epochs * 0.9], 5 * epochs // 200
    if epoch < warm:
        return lr / warm * (epoch + 1)
    for m in milestones:
        lr *= 0.1 if epoch >= m else 1.0
    return lr


@pytest.mark.parametrize("epochs", [200, 100, 30, 1])
def test_learning_rate_is_set_per_epoch_as_the_official_schedule(epochs):
    for e in range(epochs):
        assert fit.lr_at(e, epochs, 0.3) == pytest.approx(official_adjust_lr(e, epochs), rel=1e-12), e
    if epochs == 200:
        assert [round(fit.lr_at(e, 200, 0.3), 6) for e in (0, 4, 5, 159, 160, 179, 180, 199)] == \
            [0.06, 0.3, 0.3, 0.3, 0.03, 0.03, 0.003, 0.003]


def test_kaiming_initialisation_on_the_encoder_only():
    torch.manual_seed(0)
    m = ProCoResNet32()
    bound = 1 / math.sqrt(64)  # PyTorch's default Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert m.fc.weight.abs().max() <= bound and m.head[0].weight.abs().max() <= bound
    assert m.head[3].weight.abs().max() <= 1 / math.sqrt(512)
    std = m.layers[-1].conv2.weight.std().item()  # Kaiming normal, fan_in 64 * 9
    assert std == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.05)


def test_ldam_margins_scale_and_deferred_reweighting():
    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    loss = fit.LDAMLoss(counts, "cpu", epochs=200)
    m = loss.margin.double().numpy() / 30
    assert m.max() == pytest.approx(0.5) and m.argmax() == 9
    np.testing.assert_allclose(m / m[0], (np.array(counts) / counts[0]) ** -0.25, rtol=1e-6)
    w = (1 - 0.9999) / (1 - 0.9999 ** np.array(counts, float))
    np.testing.assert_allclose(loss.drw_weight.numpy(), w / w.sum() * 10, rtol=1e-6)
    assert loss.drw_epoch == 160
    logits = torch.randn(8, 10) * 5
    y = torch.arange(8)
    loss.epoch = 159
    plain = torch.nn.functional.cross_entropy(logits - 30 * torch.eye(10)[y] * torch.tensor(m, dtype=torch.float32), y)
    torch.testing.assert_close(loss(logits, y), plain)
    loss.epoch = 160
    assert not torch.isclose(loss(logits, y), plain)
    fc = NormedLinear(64, 10)
    assert fc(torch.randn(5, 64)).abs().max() <= 30 + 1e-4


def _tiny(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    y = np.arange(n) % 10
    return x, y


@pytest.mark.parametrize("method", ["proco", "ldam"])
def test_resume_is_bit_for_bit(tmp_path, method):
    """Two epochs straight against one epoch, a pause (--max-seconds) and a resume."""
    torch.set_num_threads(1)
    x, y = _tiny()
    kw = dict(epochs=2, batch=16, device="cpu", ckpt_every=1, classes=10)
    assert fit.train_arrays(method, x, y, str(tmp_path / "a"), **kw) == "done"
    assert fit.train_arrays(method, x, y, str(tmp_path / "b"), max_seconds=1e-3, **kw) == "paused"
    assert not (tmp_path / "b" / f"{method}.pt").exists()
    assert fit.train_arrays(method, x, y, str(tmp_path / "b"), resume=True, **kw) == "done"
    a = torch.load(tmp_path / "a" / f"{method}.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / f"{method}.pt", weights_only=False)
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
        assert not v.is_floating_point() or torch.isfinite(v).all(), k
    if method == "proco":
        for k, v in a["estimator"].items():
            assert torch.equal(v, b["estimator"][k]), k
    log = (tmp_path / "b" / f"{method}.log.jsonl").read_text()
    assert '"event": "paused"' in log and '"event": "resume"' in log


def test_resume_refuses_a_different_schedule(tmp_path):
    x, y = _tiny()
    fit.train_arrays("ce", x, y, str(tmp_path), epochs=2, batch=32, max_seconds=1e-3, classes=10)
    with pytest.raises(SystemExit, match="different run configuration"):
        fit.train_arrays("ce", x, y, str(tmp_path), epochs=3, batch=32, resume=True, classes=10)


def test_kappa_of_a_class_seen_once_is_capped_as_the_official_code():
    from train.vmf import kappa_official
    r = torch.tensor([0.5, 1.0, 1.0 + 1e-12, 0.999999999], dtype=torch.float64)
    k = kappa_official(128, r)
    assert k[0].item() == pytest.approx(128 * 0.5 / 0.75) and (k[1:] == 1e5).all()
