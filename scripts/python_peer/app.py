"""The Python peer of the performance benchmarks: the bundled encoder behind the best plain Python
server we know how to build. FastAPI on uvicorn (uvloop, httptools), one ONNX Runtime session per
worker process, `POST /v1/classify` with one JPEG as the body, answered with the linear head's
softmax probabilities and the top label (less work than proco-serve's calibrated vMF answer, so
the comparison flatters the peer).

The image is prepared as scripts/ort_baseline.py prepares it, as the server does: RGB, shorter
side to the model's size with a bilinear filter, centre crop, CHW float32 in [0, 1].

Run (scripts/bench_peer.py does): PEER_MODEL_DIR=models/cifar10-lt PEER_INTRA_THREADS=1 \\
    .venv-peer/bin/uvicorn --app-dir scripts/python_peer app:app --workers 2 --loop uvloop \\
    --http httptools --port 8090 --no-access-log
"""
import io
import os
import sys
import tomllib

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import ort_baseline  # noqa: E402 - scripts/ort_baseline.py, for its image preparation

MODEL_DIR = os.environ.get("PEER_MODEL_DIR", "models/cifar10-lt")
with open(os.path.join(MODEL_DIR, "model.toml"), "rb") as f:
    MANIFEST = tomllib.load(f)
HEIGHT, WIDTH = MANIFEST["input"]["height"], MANIFEST["input"]["width"]
LABELS = None

options = ort.SessionOptions()
options.intra_op_num_threads = int(os.environ.get("PEER_INTRA_THREADS", "1"))
options.inter_op_num_threads = 1
SESSION = ort.InferenceSession(os.path.join(MODEL_DIR, MANIFEST["encoder"]), sess_options=options,
                               providers=["CPUExecutionProvider"])
INPUT = SESSION.get_inputs()[0].name
LOGITS = MANIFEST["outputs"]["logits"]

app = FastAPI()


def labels():
    global LABELS
    if LABELS is None:
        import json
        with open(os.path.join(MODEL_DIR, MANIFEST["prototypes"])) as f:
            LABELS = json.load(f)["labels"]
    return LABELS


def prepare(body: bytes) -> np.ndarray:
    return ort_baseline.prepare(Image.open(io.BytesIO(body)), HEIGHT, WIDTH)[None]


@app.post("/v1/classify")
async def classify(request: Request):
    body = await request.body()
    try:
        x = prepare(body)
    except Exception as e:  # noqa: BLE001 - any undecodable body is the client's mistake
        raise HTTPException(status_code=422, detail=f"not an image: {e}")
    (logits,) = SESSION.run([LOGITS], {INPUT: x})
    z = logits[0] - logits[0].max()
    p = np.exp(z)
    p /= p.sum()
    top = int(p.argmax())
    return JSONResponse({"label": labels()[top], "probabilities": p.tolist()})


@app.get("/health/ready")
async def ready():
    return {"status": "ready"}
