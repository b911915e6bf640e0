"""Fast checks of the training-side math against the independent goldens in tests/data/golden_bessel.json
(mpmath at 70 digits; see tools/golden_bessel.py). Runs in seconds on a CPU."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from train import data as D
from train import metrics as M
from train import vmf
from train.rules import balanced_logits

GOLDEN = json.loads((Path(__file__).resolve().parents[2] / "tests" / "data" / "golden_bessel.json").read_text())
DEBYE_POINTS = [p for p in GOLDEN["points"] if p["nu"] >= vmf.NU_MIN]


def test_log_iv_matches_mpmath_over_the_whole_grid_for_nu_at_least_20():
    assert len(DEBYE_POINTS) > 400
    for p in DEBYE_POINTS:
        got = vmf.log_iv(p["nu"], np.float64(p["x"]))
        assert abs(got - p["log_iv"]) <= 1e-14 * max(1.0, abs(p["log_iv"])), p


def test_torch_float64_log_iv_agrees_with_numpy_to_the_last_bits():
    x = np.array([p["x"] for p in DEBYE_POINTS if p["nu"] == 63.0])
    a = vmf.log_iv(63.0, x)
    b = vmf.log_iv(63.0, torch.tensor(x, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(b, a, rtol=1e-15, atol=1e-15)


def test_autograd_derivative_is_the_bessel_ratio():
    """d/dx [ln I_nu(x) - nu ln x] = I_{nu+1}(x)/I_nu(x): the gradient ProCo's loss needs."""
    pts = [p for p in DEBYE_POINTS if p["nu"] == 63.0 and 1e-3 <= p["x"] <= 1e6]
    x = torch.tensor([p["x"] for p in pts], dtype=torch.float64, requires_grad=True)
    (vmf.log_iv(63.0, x) - 63.0 * torch.log(x)).sum().backward()
    want = np.exp([p["log_ratio"] for p in pts])
    # Cancellation between the two terms at small x costs ~1e-11 absolute: irrelevant to SGD.
    np.testing.assert_allclose(x.grad.numpy(), want, rtol=1e-9, atol=1e-10)


def test_log_cp_matches_golden_for_large_p():
    rows = [r for r in GOLDEN["vmf"] if r["p"] / 2 - 1 >= vmf.NU_MIN]
    assert rows
    for r in rows:
        got = vmf.log_cp(r["p"], np.float64(r["kappa"]))
        assert abs(got - r["log_c"]) <= 1e-14 * max(1.0, abs(r["log_c"])), r


def test_expected_contrastive_logits_and_posteriors_match_the_example():
    e = GOLDEN["proco_example"]
    mu, z, kappa, n = np.array(e["mu"]), np.array(e["z"])[None, :], np.array(e["kappa"]), np.array(e["n"], float)
    kt = vmf.kappa_tilde(kappa, mu, z, e["tau"])[0]
    np.testing.assert_allclose(kt, e["kappa_tilde"], rtol=1e-13)
    lb = vmf.proco_logits(kappa, mu, z, e["tau"])[0]
    assert np.all(np.abs(lb - e["proco_logit"]) <= 1e-12 + 1e-15 * kappa)
    la = vmf.vmf_loglik(kappa, mu, z)[0]
    assert np.all(np.abs(la - e["vmf_loglik"]) <= 1e-14 * np.maximum(1, np.abs(e["vmf_loglik"])))
    log_pi = np.array(e["log_prior_train"])
    g = lb[None, :]
    np.testing.assert_allclose(M.posterior(g, 1.0, log_pi)[0], e["post_proco_train_prior"], atol=1e-12)
    np.testing.assert_allclose(M.posterior(g, 1.0, np.full(4, -math.log(4)))[0], e["post_proco_uniform"], atol=1e-12)
    # The served `vmf` rule is the log-likelihood itself: adding ln q gives the posterior under q.
    gv = balanced_logits("vmf", z, np.zeros((1, 4)), mu, kappa, n, e["tau"], 1.0)
    for key, log_q in (("post_vmf_train_prior", log_pi), ("post_vmf_uniform", np.full(4, -math.log(4)))):
        want = np.array(e[key])
        got = M.posterior(gv, 1.0, log_q)[0]
        assert np.all(np.abs(got - want) <= 1e-15 + 1e-9 * want), key


def test_estimator_is_an_exact_running_mean_and_gives_the_official_kappa():
    g = torch.Generator().manual_seed(0)
    est = vmf.EstimatorCV(3, 8, "cpu", g)
    feats = torch.nn.functional.normalize(torch.randn(60, 8, generator=g, dtype=torch.float64), dim=1)
    labels = torch.tensor([0] * 30 + [1] * 30)  # class 2 never seen: its prior state must survive
    before = est.ave[2].clone()
    for i in range(0, 60, 7):
        est.update(feats[i:i + 7], labels[i:i + 7])
    torch.testing.assert_close(est.ave[0], feats[:30].mean(0), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(est.ave[1], feats[30:].mean(0), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(est.ave[2], before)
    est.update_kappa()
    r = est.ave[0].norm().item()
    assert est.kappa[0].item() == pytest.approx(8 * r / (1 - r * r), rel=1e-12)


def test_proco_loss_is_finite_and_trains_the_features():
    torch.manual_seed(0)
    loss_fn = vmf.ProCoLoss(4, 128, 0.1, torch.log(torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)), "cpu")
    z = torch.nn.functional.normalize(torch.randn(16, 128), dim=1).requires_grad_(True)
    y = torch.arange(16) % 4
    loss = loss_fn([z, z], y)
    loss.backward()
    assert torch.isfinite(loss) and z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_calibration_metrics_match_the_example():
    e = GOLDEN["calibration_example"]
    g, y = np.array(e["balanced_logits"]), np.array(e["labels"])
    for name, log_q in (("uniform_prior", np.full(e["K"], -math.log(e["K"]))), ("train_prior", np.log(e["pi_train"]))):
        m = M.evaluate(g, 1.0, log_q, y, np.full(e["K"], 500))
        want = e[name]
        for key in ("ece", "classwise_ece", "nll", "brier"):
            assert m[key] == pytest.approx(want[key], abs=1e-12), (name, key)
        assert m["top1"] == pytest.approx(want["accuracy"], abs=1e-12)


def test_temperature_fit_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    g_true = rng.normal(size=(4000, 5)) * 2
    y = np.array([rng.choice(5, p=p) for p in M.posterior(g_true, 1.0, np.zeros(5))])
    t = M.fit_temperature(g_true * 3.0, y, np.zeros(5))
    assert t == pytest.approx(3.0, rel=0.08)


def test_long_tailed_split_counts_and_disjointness():
    assert D.lt_counts() == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    y = np.repeat(np.arange(10), 5000)
    train, val = D.long_tailed_split(y)
    assert np.bincount(y[train]).tolist() == [4900, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert np.bincount(y[val]).tolist() == [100] * 10
    assert not set(train) & set(val)
    again, _ = D.long_tailed_split(y)
    assert np.array_equal(train, again)


def test_cifar100_long_tailed_split_keeps_every_tail_class_and_20_for_validation():
    spec = D.DATASETS["cifar100"]
    counts = D.lt_counts(n_max=spec.n_max, classes=100)
    assert (counts[0], counts[1], counts[-1], sum(counts)) == (500, 477, 5, 10847)
    y = np.repeat(np.arange(100), 500)
    train, val = D.long_tailed_split(y, val_per_class=spec.val_per_class, n_max=spec.n_max)
    # only class 0, which keeps all 500 officially, gives up kept images to validation
    assert np.bincount(y[train]).tolist() == [480] + counts[1:]
    assert np.bincount(y[val]).tolist() == [20] * 100
    assert not set(train) & set(val)
    assert spec.classes == sorted(spec.classes) and len(set(spec.classes)) == 100


def test_shipped_prototypes_follow_the_documented_schema():
    import copy

    import jsonschema

    root = Path(__file__).resolve().parents[2]
    schema = json.loads((root / "docs" / "prototypes.schema.json").read_text())
    doc = json.loads((root / "models" / "cifar10-lt" / "prototypes.json").read_text())
    jsonschema.validate(doc, schema)
    bad = copy.deepcopy(doc)
    bad["classes"][0]["kappa"] = -1.0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    # The content-derived version is what the exporter computes.
    from train.export import version_id
    assert doc["version"] == version_id(doc)


def test_export_leaves_a_run_that_is_still_going_alone(tmp_path):
    # A baseline training in the same folder as the finished ProCo run has a log but no <method>.pt yet:
    # exporting must neither copy its partial log over the shipped one nor record it as exported.
    from train.export import export_runs
    runs, model = tmp_path / "runs", tmp_path / "model"
    runs.mkdir()
    (runs / "la.log.jsonl").write_text('{"event": "start"}\n')
    assert export_runs(str(runs), str(model), "cifar10-png.tar.xz", ("la", "ce")) == []
    assert not (model / "logs" / "la.log.jsonl").exists()
    assert (model / "logs" / "provenance.json").read_text().strip() == "{}"
