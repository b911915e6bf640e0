"""The TensorBoard reader of train/official_log.py against event records built here byte by byte."""
import json
import struct

from train import official_log


def _varint(n: int) -> bytes:
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def _field(number: int, wire: int, payload: bytes) -> bytes:
    key = _varint(number << 3 | wire)
    return key + (_varint(len(payload)) + payload if wire == 2 else payload)


def _event(step: int, tag: str, value: float) -> bytes:
    summary_value = _field(1, 2, tag.encode()) + _field(2, 5, struct.pack("<f", value))
    event = _field(1, 1, struct.pack("<d", 1.0)) + _field(2, 0, _varint(step)) + _field(5, 2, _field(1, 2, summary_value))
    # TFRecord framing; the reader does not verify the CRCs, so zeros stand in for them.
    return struct.pack("<Q", len(event)) + b"\0" * 4 + event + b"\0" * 4


def test_reads_every_scalar_by_tag_and_step(tmp_path):
    path = tmp_path / "events"
    header = _field(1, 1, struct.pack("<d", 0.0)) + _field(3, 2, b"brain.Event:2")  # file_version, no summary
    body = struct.pack("<Q", len(header)) + b"\0" * 4 + header + b"\0" * 4
    body += _event(0, "acc/val_top1", 15.8) + _event(1, "acc/val_top1", 23.35) + _event(300, "CE_loss/train", 0.25)
    path.write_bytes(body)
    got = official_log.scalars(str(path))
    assert set(got) == {"acc/val_top1", "CE_loss/train"}
    assert got["acc/val_top1"] == {0: struct.unpack("<f", struct.pack("<f", 15.8))[0],
                                   1: struct.unpack("<f", struct.pack("<f", 23.35))[0]}
    assert abs(got["CE_loss/train"][300] - 0.25) < 1e-7


def test_committed_extract_is_the_official_run():
    doc = json.load(open("train/reference/proco-official-cifar10-lt-100.json"))
    acc = doc["test_top1_linear_head"]
    assert doc["epochs"] == len(acc) == 200
    assert round(max(acc), 1) == 85.9  # the figure the paper and the official README report
