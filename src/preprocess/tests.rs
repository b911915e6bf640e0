use super::*;

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, format).unwrap();
    buf.into_inner()
}

fn sample() -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(40, 30, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 8) as u8, 128])
    }))
}

fn cifar_manifest() -> ModelManifest {
    ModelManifest::parse(crate::manifest::EXAMPLE, std::path::Path::new("/m")).unwrap()
}

#[test]
fn thin_images_are_cropped_before_they_are_resized() {
    // Resizing first would make this 32 x 12,800,000 (1.2 GB); cropping first keeps
    // a 2 x 2 centre region. Its colour marks the middle, so the crop is checked too.
    let (w, h) = (2, 800_000);
    let img = RgbImage::from_fn(w, h, |_, y| {
        if y.abs_diff(h / 2) < 4 {
            image::Rgb([200, 10, 10])
        } else {
            image::Rgb([0, 0, 255])
        }
    });
    let out = resize_for(&img, &cifar_manifest());
    assert_eq!(out.dimensions(), (32, 32));
    assert_eq!(out.get_pixel(16, 16).0, [200, 10, 10]);
    // An ordinary photo-shaped image keeps its centre, as shorter-side-then-crop does.
    let wide = RgbImage::from_fn(64, 32, |x, _| image::Rgb([(x * 4) as u8, 0, 0]));
    let out = resize_for(&wide, &cifar_manifest());
    assert_eq!(out.dimensions(), (32, 32));
    assert_eq!(out.get_pixel(0, 0).0[0], 64);
}

#[test]
fn progressive_scan_bombs_are_refused() {
    let jpeg = encode(&sample(), ImageFormat::Jpeg);
    let mut bomb = jpeg[..jpeg.len() - 2].to_vec();
    for _ in 0..300 {
        bomb.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x02]);
    }
    bomb.extend_from_slice(&[0xFF, 0xD9]);
    match decode(&bomb, &DecodeLimits::default()) {
        Err(DecodeError::Invalid(m)) => assert!(m.contains("scans"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn decodes_all_supported_formats() {
    let limits = DecodeLimits::default();
    for format in [
        ImageFormat::Png,
        ImageFormat::Jpeg,
        ImageFormat::Bmp,
        ImageFormat::Gif,
    ] {
        let bytes = encode(&sample(), format);
        let img = decode(&bytes, &limits).unwrap_or_else(|e| panic!("{format:?}: {e}"));
        assert_eq!(img.dimensions(), (40, 30), "{format:?}");
    }
    let lossless = encode(&sample(), ImageFormat::WebP);
    assert_eq!(decode(&lossless, &limits).unwrap().dimensions(), (40, 30));
}

#[test]
fn grey_jpeg_becomes_rgb8() {
    let grey = DynamicImage::ImageLuma8(image::ImageBuffer::from_fn(8, 8, |x, _| {
        image::Luma([x as u8 * 30])
    }));
    let img = decode(&encode(&grey, ImageFormat::Jpeg), &DecodeLimits::default()).unwrap();
    let p = img.get_pixel(3, 3).0;
    assert_eq!(p[0], p[1]);
    assert_eq!(p[1], p[2]);
}

#[test]
fn grey_alpha_16bit_become_rgb8() {
    let limits = DecodeLimits::default();
    let grey16 = DynamicImage::ImageLuma16(image::ImageBuffer::from_pixel(
        5,
        4,
        image::Luma([65535u16]),
    ));
    let img = decode(&encode(&grey16, ImageFormat::Png), &limits).unwrap();
    assert_eq!(img.get_pixel(0, 0).0, [255, 255, 255]);
    let rgba = DynamicImage::ImageRgba8(image::ImageBuffer::from_pixel(
        5,
        4,
        image::Rgba([10, 20, 30, 0]),
    ));
    let img = decode(&encode(&rgba, ImageFormat::Png), &limits).unwrap();
    assert_eq!(img.get_pixel(0, 0).0, [10, 20, 30]);
}

#[test]
fn refuses_truncated_and_garbage() {
    let limits = DecodeLimits::default();
    assert_eq!(decode(b"", &limits), Err(DecodeError::Empty));
    assert_eq!(
        decode(b"hello world", &limits),
        Err(DecodeError::UnknownFormat)
    );
    let jpeg = encode(&sample(), ImageFormat::Jpeg);
    assert!(matches!(
        decode(&jpeg[..jpeg.len() / 2], &limits),
        Err(DecodeError::Truncated(..))
    ));
    // Only the header: the image crate alone would return a grey image.
    assert!(matches!(
        decode(&jpeg[..200], &limits),
        Err(DecodeError::Truncated(..))
    ));
    let mut padded = jpeg.clone();
    padded.extend_from_slice(&[0, 0, 0]);
    assert!(decode(&padded, &limits).is_ok());
    // Cameras append trailers after the end marker: still a whole image.
    let mut trailer = jpeg.clone();
    trailer.extend_from_slice(b"vendor trailer \xff\xd8 bytes");
    assert!(decode(&trailer, &limits).is_ok());
    // Cut just before the end marker: the scan is incomplete.
    assert!(matches!(
        decode(&jpeg[..jpeg.len() - 2], &limits),
        Err(DecodeError::Truncated(..))
    ));
    let png = encode(&sample(), ImageFormat::Png);
    assert!(matches!(
        decode(&png[..png.len() - 20], &limits),
        Err(DecodeError::Truncated(..))
    ));
}

#[test]
fn refuses_oversized_header_before_decoding() {
    // A valid PNG signature + IHDR claiming 100000 x 100000, then IEND.
    let bytes = png_header(100_000, 100_000);
    match decode(&bytes, &DecodeLimits::default()) {
        Err(DecodeError::TooLarge { pixels, .. }) => assert_eq!(pixels, 10_000_000_000),
        other => panic!("{other:?}"),
    }
}

/// A PNG with only a header (IHDR) and IEND, for size checks.
pub fn png_header(w: u32, h: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc_input = kind.to_vec();
        crc_input.extend_from_slice(data);
        out.extend_from_slice(&crc_input);
        out.extend_from_slice(&crc32fast::hash(&crc_input).to_be_bytes());
    }
    let mut out = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IEND", &[]);
    out
}

#[test]
fn exif_orientation_is_applied() {
    // Orientation 6 (rotate 90 clockwise): a 4x2 image becomes 2x4.
    let jpeg = encode(
        &DynamicImage::ImageRgb8(RgbImage::new(4, 2)),
        ImageFormat::Jpeg,
    );
    let exif: Vec<u8> = {
        let mut tiff = b"MM\0\x2a\0\0\0\x08".to_vec();
        tiff.extend_from_slice(&1u16.to_be_bytes()); // one IFD entry
        tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
        tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
        tiff.extend_from_slice(&1u32.to_be_bytes());
        tiff.extend_from_slice(&[0, 6, 0, 0]);
        tiff.extend_from_slice(&0u32.to_be_bytes());
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&tiff);
        let mut seg = vec![0xFF, 0xE1];
        seg.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
        seg.extend_from_slice(&app1);
        seg
    };
    let mut with_exif = jpeg[..2].to_vec();
    with_exif.extend_from_slice(&exif);
    with_exif.extend_from_slice(&jpeg[2..]);
    let img = decode(&with_exif, &DecodeLimits::default()).unwrap();
    assert_eq!(img.dimensions(), (2, 4));
}
