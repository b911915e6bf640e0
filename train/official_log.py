"""Extract the official ProCo CIFAR-10-LT training log (a TensorBoard event file) into a small JSON file
that the comparison table reads, so the table quotes the authors' own run rather than a figure typed by hand.

The event file is `logs/ProCo_cifar10_imb0.01_epochs200/events.out.tfevents.1671441294.node03` of
LeapLabTHU/ProCo. TensorBoard's format is TFRecord framing (u64 length, u32 CRC, payload, u32 CRC) around
`Event` protocol buffers whose `Summary` values carry (tag, simple_value); this reader decodes just that,
with the standard library, so no TensorBoard install is needed.

    python3 train/official_log.py EVENTS_FILE --commit SHA --out train/reference/proco-official-cifar10-lt-100.json
"""
from __future__ import annotations

import argparse
import json
import struct
from collections import defaultdict

REPOSITORY = "https://github.com/LeapLabTHU/ProCo"
PATH = "logs/ProCo_cifar10_imb0.01_epochs200/events.out.tfevents.1671441294.node03"
# Tags kept, with the name used in the JSON. The official `validate` scores the linear head on the
# balanced test set ("val" in their code); train_top1 scores ce_logits + alpha * contrastive logits.
TAGS = {"acc/val_top1": "test_top1_linear_head", "acc/train_top1": "train_top1_ensemble",
        "CE_loss/train": "train_ce_loss", "SCL_loss/train": "train_scl_loss"}


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _fields(buf: bytes):
    """(field number, wire type, value) of one protobuf message; values of length-delimited fields are bytes."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i:i + n], i + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


def scalars(path: str) -> dict[str, dict[int, float]]:
    """tag -> {step: value} for every simple_value summary in a TensorBoard event file."""
    data = open(path, "rb").read()
    out: dict[str, dict[int, float]] = defaultdict(dict)
    i = 0
    while i < len(data):
        (length,) = struct.unpack("<Q", data[i:i + 8])
        record = data[i + 12:i + 12 + length]
        i += 12 + length + 4
        step, summary = 0, None
        for field, _, value in _fields(record):  # Event: 2 step, 5 summary
            if field == 2:
                step = value
            elif field == 5:
                summary = value
        for field, _, value in _fields(summary or b""):  # Summary: 1 value (repeated)
            if field != 1:
                continue
            tag, number = None, None
            for f, _, v in _fields(value):  # Summary.Value: 1 tag, 2 simple_value
                if f == 1:
                    tag = v.decode()
                elif f == 2:
                    (number,) = struct.unpack("<f", v)
            if tag is not None and number is not None:
                out[tag][step] = number
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("events", help="the official event file")
    p.add_argument("--commit", required=True, help="the LeapLabTHU/ProCo commit the file was read at")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    found = scalars(a.events)
    doc = {"source": {"repository": REPOSITORY, "commit": a.commit, "path": PATH},
           "note": "percent; epoch e is TensorBoard step e - 1; the test set is CIFAR-10's balanced 10,000 images",
           "epochs": len(found["acc/val_top1"])}
    for tag, name in TAGS.items():
        doc[name] = [round(found[tag][s], 4) for s in sorted(found[tag])]
    with open(a.out, "w") as fh:
        json.dump(doc, fh, indent=1)
        fh.write("\n")
    acc = doc["test_top1_linear_head"]
    best = max(range(len(acc)), key=acc.__getitem__)
    print(f"{a.out}: {doc['epochs']} epochs, last {acc[-1]:.2f}%, best {acc[best]:.2f}% at epoch {best + 1}")


if __name__ == "__main__":
    main()
