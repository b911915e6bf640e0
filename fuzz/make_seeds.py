#!/usr/bin/env python3
"""Writes the fuzz targets' seed inputs into fuzz/seeds/<target>/ from real files of the
repository (the parity JPEGs, the bundled prototypes.json) and small images built here with the
standard library (PNG, BMP, GIF; a JPEG with an EXIF orientation). Deterministic: running it
again writes the same bytes. Usage: python3 fuzz/make_seeds.py
"""
import base64
import json
import pathlib
import struct
import zlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEEDS = ROOT / "fuzz" / "seeds"
JPEGS = sorted((ROOT / "tests" / "fixtures" / "parity").glob("*.jpg"))


def write(target, name, data):
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def png(width, height, color_type, bit_depth, rows, palette=None, interlace=0):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, interlace)
    raw = b"".join(b"\x00" + r for r in rows)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
    if palette:
        out += chunk(b"PLTE", palette)
    return out + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def bmp(width, height):
    row = bytes((x * 40) % 256 for x in range(width * 3))
    row += b"\x00" * ((4 - len(row) % 4) % 4)
    pixels = row * height
    header = struct.pack("<2sIHHI", b"BM", 54 + len(pixels), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    return header + info + pixels


# A 1x1 GIF89a: a two-colour global table, a graphic control extension (transparency), the
# image descriptor and its LZW data (minimum code size 2), the trailer.
GIF = (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00"
       b"!\xf9\x04\x01\x00\x00\x00\x00"
       b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")


def jpeg_with_orientation(jpeg, orientation):
    tiff = b"MM\x00*\x00\x00\x00\x08" + struct.pack(">HHHIHH", 1, 0x0112, 3, 1, orientation, 0) + b"\x00\x00\x00\x00"
    body = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body
    return jpeg[:2] + app1 + jpeg[2:]


def images():
    for p in JPEGS[::10]:  # one of each fourth class: 4 JPEGs
        write("image", p.name, p.read_bytes())
    first = JPEGS[0].read_bytes()
    write("image", "exif_orientation_6.jpg", jpeg_with_orientation(first, 6))
    rgb = [bytes((x * 50 + y * 30 + c * 70) % 256 for x in range(5) for c in range(3)) for y in range(3)]
    write("image", "rgb_5x3.png", png(5, 3, 2, 8, rgb))
    write("image", "grey_4x4.png", png(4, 4, 0, 8, [bytes(range(y * 4, y * 4 + 4)) for y in range(4)]))
    write("image", "rgba16_2x2.png", png(2, 2, 6, 16, [bytes(range(16)), bytes(range(16, 32))]))
    write("image", "palette_3x1.png", png(3, 1, 3, 8, [b"\x00\x01\x02"], palette=b"\xff\x00\x00\x00\xff\x00\x00\x00\xff"))
    write("image", "interlaced_4x4.png", png(4, 4, 0, 8, [bytes(4)] * 4, interlace=1))
    write("image", "rgb_4x3.bmp", bmp(4, 3))
    write("image", "transparent_1x1.gif", GIF)


def multipart():
    small = png(5, 3, 2, 8, [bytes(15)] * 3)
    jpeg = JPEGS[0].read_bytes()
    b = b"XyZzy"
    ct = b"multipart/form-data; boundary=" + b + b"\n"
    one = (b"--" + b + b'\r\nContent-Disposition: form-data; name="a"; filename="a.png"\r\n'
           b"Content-Type: image/png\r\n\r\n" + small + b"\r\n--" + b + b"--\r\n")
    write("multipart", "one_part", ct + one)
    two = (b"--" + b + b'\r\nContent-Disposition: form-data; name="a"\r\n\r\n' + small +
           b"\r\n--" + b + b'\r\nContent-Disposition: form-data; name="b"; filename="b.jpg"\r\n'
           b"Content-Type: application/octet-stream\r\n\r\n" + jpeg + b"\r\n--" + b + b"--\r\n")
    write("multipart", "two_parts", ct + two)
    write("multipart", "quoted_boundary", b'multipart/form-data; boundary="' + b + b'"\n' + one)
    write("multipart", "text_part", ct + one.replace(b"image/png", b"text/plain"))
    write("multipart", "empty_part", ct + b"--" + b + b'\r\nContent-Disposition: form-data; name="a"\r\n\r\n\r\n--' + b + b"--\r\n")
    write("multipart", "single_image", b"image/png\n" + small)
    write("multipart", "no_content_type", b"\n" + small)


def queries():
    for i, q in enumerate([
        "top_k=3&rule=vmf&prior=train&posterior=true",
        "prior=1,2,3,4,5,6,7,8,9,10",
        "prior=0.1%2C0.1%2C0.1%2C0.1%2C0.1%2C0.1%2C0.1%2C0.1%2C0.1%2C0.1&rule=linear",
        "prior=1e308,1,1&top_k=2&rule=proco",
        "rule=ensemble&prior=adaptive&top_k=100&posterior=no",
        "top_k=0",
        "posterior=maybe",
        "prior=uniform&top_k=%205&rule=softmax",
        "",
    ]):
        write("query", f"q{i}", q.encode())


def prototypes():
    shipped = (ROOT / "models" / "cifar10-lt" / "prototypes.json").read_bytes()
    write("prototypes", "cifar10-lt.json", shipped)
    doc = {
        "schema": "proco-prototypes", "schema_version": 2, "version": "x", "model": "m",
        "feature_dim": 3, "tau": 0.1, "alpha": 1.0, "labels": ["a", "b"],
        "default_rule": "proco", "temperatures": {"proco": 1.5, "vmf": 2},
        "classes": [
            {"index": 0, "label": "a", "count": 4, "kappa": 10.0, "mean_resultant_length": 0.5,
             "mu": [1.0, 0.0, 0.0], "sum": [2.0, 0.0, 0.0], "source": "training", "head_index": 0},
            {"index": 1, "label": "b", "count": 2, "kappa": 5.0, "mean_resultant_length": 0.25,
             "mu": [0.0, 0.6, 0.8], "sum": [0.0, 0.3, 0.4], "source": "examples"},
        ],
    }
    write("prototypes", "v2_small.json", json.dumps(doc).encode())
    v1 = dict(doc, schema_version=1, classes=[
        {k: v for k, v in c.items() if k not in ("sum", "source", "head_index")} for c in doc["classes"]])
    write("prototypes", "v1_small.json", json.dumps(v1).encode())


def oip():
    jpegs = [p.read_bytes() for p in JPEGS[:3]]

    def framed(items):
        return b"".join(struct.pack("<I", len(i)) + i for i in items)

    def with_header(doc, binary=b""):
        header = json.dumps(doc).encode()
        return b"\x02" + struct.pack("<I", len(header)) + header + binary

    write("oip_request", "raw_image", b"\x01" + jpegs[0])
    write("oip_request", "raw_framed", b"\x01" + framed(jpegs[:2]))
    data = framed(jpegs)
    write("oip_request", "binary_bytes", with_header({
        "id": "three", "parameters": {"rule": "vmf", "prior": "train"},
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [3, 1],
                    "parameters": {"binary_data_size": len(data)}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}},
                    {"name": "logits", "parameters": {"classification": 2}}]}, data))
    pixels = struct.pack("<12f", *[i / 12 for i in range(12)])
    write("oip_request", "binary_pixels", with_header({
        "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 3, 2, 2],
                    "parameters": {"binary_data_size": len(pixels)}}],
        "parameters": {"binary_data_output": True}}, pixels))
    write("oip_request", "json_base64", b"\x00" + json.dumps({
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                    "data": [base64.b64encode(jpegs[1]).decode()]}],
        "outputs": [{"name": "feature"}], "parameters": {"prior": "1,1,1,1,1,1,1,1,1,2"}}).encode())
    write("oip_request", "json_pixels", b"\x00" + json.dumps({
        "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 3, 32, 32],
                    "data": [[[[0.5] * 32] * 32] * 3]}]}).encode())
    write("oip_request", "header_line", b"\x03 7 \n" + b'{"a":1}')


images()
multipart()
queries()
prototypes()
oip()
