"""Writes tests/fixtures/photos/: real photographs of several sizes and shapes, one with an EXIF
orientation, for the preprocessing parity check (scripts/preprocess_parity.py).

The photos are scikit-image's sample data (public domain or CC0: NASA's astronaut and rocket, Stefan
van der Walt's cat "chelsea", Rachel Michetti's coffee), read from its wheel:

    pip download --no-deps -d /tmp/skw scikit-image
    python3 scripts/photo_fixtures.py /tmp/skw/scikit_image-*.whl
"""
import io
import os
import sys
import zipfile

from PIL import Image

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "photos")


def main(wheel):
    z = zipfile.ZipFile(wheel)

    def photo(name):
        return Image.open(io.BytesIO(z.read(f"skimage/data/{name}"))).convert("RGB")

    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "rocket.jpg"), "wb") as fh:  # as published: 427 x 640 JPEG
        fh.write(z.read("skimage/data/rocket.jpg"))
    shots = {
        "chelsea.jpg": photo("chelsea.png"),  # 451 x 300
        "coffee.png": photo("coffee.png"),  # 600 x 400, lossless
        "astronaut-333x501.jpg": photo("astronaut.png").crop((90, 5, 423, 506)),  # odd sizes, portrait
        "coffee-601x97.jpg": photo("coffee.png").resize((601, 97), Image.LANCZOS),  # thin, shorter side < 224
        "chelsea-57x43.png": photo("chelsea.png").resize((57, 43), Image.LANCZOS),  # tiny: upscaled 4.5x
    }
    for name, img in shots.items():
        img.save(os.path.join(OUT, name), quality=90) if name.endswith(".jpg") else img.save(os.path.join(OUT, name))
    # A phone-style photo: the pixels stored turned 90 degrees, EXIF orientation 6 to turn them back.
    exif = Image.Exif()
    exif[0x0112] = 6
    photo("chelsea.png").transpose(Image.ROTATE_90).save(os.path.join(OUT, "chelsea-exif6.jpg"), quality=90,
                                                         exif=exif.tobytes())
    for n in sorted(os.listdir(OUT)):
        print(n, Image.open(os.path.join(OUT, n)).size, os.path.getsize(os.path.join(OUT, n)))


if __name__ == "__main__":
    main(sys.argv[1])
