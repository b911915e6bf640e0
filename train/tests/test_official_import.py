"""import-official refuses what it cannot import faithfully, and never runs code from a checkpoint.

The genuine checkpoint is one the official ProCo code wrote itself (train/official_launch.py, one CIFAR-10-LT
epoch of ResNet-32 on the CPU); the others are made from it here."""
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from train import official as O

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "official" / "cifar10-lt-resnet32"
CKPT = FIXTURE / "ckpt.pth.tar"
CLASSES = FIXTURE / "classes.txt"


def run_import(tmp_path, ckpt, classes=CLASSES):
    out = tmp_path / "model"
    with pytest.raises(O.Refused) as refused:
        O.import_official(str(ckpt), str(classes), str(tmp_path), str(out), server="/nonexistent/proco-serve")
    assert not out.exists(), "nothing may be left in --out after a refusal"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".import-")]
    return str(refused.value)


def test_the_genuine_checkpoint_reads_with_inert_stand_ins():
    ckpt = O.load_checkpoint(str(CKPT))
    assert isinstance(ckpt["criterion_scl"], O.ProCoLossState)
    off = O.read_official(ckpt, str(CKPT))
    assert (off.arch, off.classes, off.ave.shape, off.tau) == ("resnet32", 10, (10, 128), 0.1)
    model = O.build_model(off)
    with torch.no_grad():
        h, logits = model(torch.zeros(2, 3, 32, 32))
    assert logits.shape == (2, 10)


class _Trap:
    """A global the official checkpoints never hold: unpickling it would create a file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_checkpoint_with_another_global_is_refused_and_nothing_in_it_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {}, "criterion_scl": _Trap(str(marker))}, evil)
    armed = tmp_path / "armed"
    pickle.loads(pickle.dumps(_Trap(str(armed))))  # the trap does work when unpickled the unsafe way
    assert armed.exists()
    msg = run_import(tmp_path, evil)
    assert "builtins.open" in msg or "io.open" in msg, msg
    assert not marker.exists()
    # ... and the same object in a legacy (non-zip) file is refused by the weights-only unpickler itself
    legacy = tmp_path / "legacy.pth.tar"
    torch.save({"criterion_scl": _Trap(str(marker))}, legacy, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(legacy)
    msg = run_import(tmp_path, legacy)
    assert "could not be read safely" in msg, msg
    assert not marker.exists()


def test_a_truncated_checkpoint_is_refused(tmp_path):
    cut = tmp_path / "cut.pth.tar"
    data = CKPT.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    msg = run_import(tmp_path, cut)
    assert "truncated" in msg or "could not be read" in msg, msg


def test_a_checkpoint_without_criterion_scl_is_refused(tmp_path):
    ckpt = O.load_checkpoint(str(CKPT))
    plain = tmp_path / "plain.pth.tar"
    torch.save({k: v for k, v in ckpt.items() if k in ("epoch", "arch", "state_dict")}, plain)
    assert "no criterion_scl" in run_import(tmp_path, plain)


def test_a_classes_file_of_the_wrong_length_is_refused(tmp_path):
    short = tmp_path / "classes.txt"
    short.write_text("\n".join(CLASSES.read_text().split()[:9]) + "\n")
    msg = run_import(tmp_path, CKPT, short)
    assert "names 9 classes; the checkpoint has 10" in msg, msg


def test_zero_and_nan_rows_of_ave_are_refused():
    ckpt = O.load_checkpoint(str(CKPT))
    ave = ckpt["criterion_scl"].get("estimator_old").get("Ave")
    ave[3] = 0
    ave[5, 0] = float("nan")
    with pytest.raises(O.Refused, match=r"NaN or zero rows \(classes \[3, 5\]\)"):
        O.read_official(ckpt)


def test_mu_and_kappa_are_what_the_official_loss_uses():
    import json

    ref = json.loads((FIXTURE / "reference.json").read_text())["estimator_old"]
    mu, kappa, _ = O.vmf_from(O.read_official(O.load_checkpoint(str(CKPT))))
    assert np.abs(mu - np.array(ref["mu"])).max() < 1e-6
    assert np.abs(kappa / np.array(ref["kappa"]) - 1).max() < 1e-6
