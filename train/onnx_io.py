"""Run an exported encoder with ONNX Runtime over uint8 images, the way the server feeds it."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort


def session(path: str) -> ort.InferenceSession:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def to_input(images_u8: np.ndarray) -> np.ndarray:
    """[N,H,W,3] uint8 RGB -> [N,3,H,W] float32 in [0,1]."""
    return np.ascontiguousarray(images_u8.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)


def encode(sess: ort.InferenceSession, images_u8: np.ndarray, batch: int = 500, label: str = ""):
    feats, logits, embs = [], [], []
    for i in range(0, len(images_u8), batch):
        z, f, h = sess.run(["feature", "logits", "embedding"], {"image": to_input(images_u8[i:i + batch])})
        feats.append(z), logits.append(f), embs.append(h)
        done = min(i + batch, len(images_u8))
        if done == len(images_u8) or (done // batch) % 5 == 0:
            print(f"  encoding {label}: {done}/{len(images_u8)} images", flush=True)
    return np.concatenate(feats), np.concatenate(logits), np.concatenate(embs)
