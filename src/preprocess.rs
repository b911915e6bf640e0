//! Image bytes -> the encoder's input tensor.
//!
//! Decoding untrusted bytes is where a server gets hurt, so every check happens here,
//! in this order, before any large allocation:
//! 1. the format is sniffed from the bytes (JPEG, PNG, WebP, GIF, BMP; nothing else);
//! 2. the file must be complete: the `image` crate happily decodes a JPEG cut off in the
//!    middle (even with no scan data at all) as a valid grey image, so we check end
//!    markers ourselves (JPEG EOI, PNG IEND, GIF trailer, RIFF size for WebP);
//! 3. the dimensions are read from the header, and zero-sized or over-`max_pixels` images
//!    are refused before decoding; the decoder also gets an allocation limit;
//! 4. decode, apply EXIF orientation, convert anything (grey, alpha, 16-bit, palette) to
//!    RGB8 (alpha is dropped, not composited);
//! 5. resize as `model.toml` says (shorter side, then centre crop, triangle filter) and
//!    lay out as CHW float32 in [0, 1] (normalisation is inside the ONNX graph).

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};

use crate::manifest::{ModelManifest, ResizePolicy};

/// Limits applied to every image.
#[derive(Clone, Copy, Debug)]
pub struct DecodeLimits {
    /// Largest width x height accepted.
    pub max_pixels: u64,
    /// Largest allocation the decoder may make, in bytes.
    pub max_alloc: u64,
}

impl DecodeLimits {
    /// Allocation budget derived from the pixel budget (16-bit RGBA is 8 bytes a pixel).
    pub fn from_max_pixels(max_pixels: u64) -> Self {
        DecodeLimits {
            max_pixels,
            max_alloc: max_pixels.saturating_mul(8).max(64 << 20),
        }
    }
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self::from_max_pixels(40_000_000)
    }
}

/// Why an image was refused. Every variant is the client's fault (a 4xx).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("the image is empty")]
    Empty,
    #[error("not a JPEG, PNG, WebP, GIF or BMP image")]
    UnknownFormat,
    #[error("{0} images are not supported (JPEG, PNG, WebP, GIF, BMP are)")]
    UnsupportedFormat(String),
    #[error("the {0} image is truncated: {1}")]
    Truncated(&'static str, String),
    #[error("the image has zero width or height ({0}x{1})")]
    ZeroSize(u32, u32),
    #[error("the image is {width}x{height} = {pixels} pixels, more than the limit of {max}")]
    TooLarge {
        width: u32,
        height: u32,
        pixels: u64,
        max: u64,
    },
    #[error("the image cannot be decoded: {0}")]
    Invalid(String),
}

/// Whether the JPEG's scan data is followed by an end-of-image marker. Only the bytes after the
/// first start-of-scan are searched: before it, an EXIF thumbnail may hold an FF D9 of its own;
/// inside entropy-coded data FF is always followed by 00 or a restart marker, so FF D9 there is the
/// real end. Bytes after it (camera trailers, padding) are allowed.
fn jpeg_has_end_of_image(bytes: &[u8]) -> bool {
    let mut i = 2; // after SOI
    let scan_start = loop {
        while i < bytes.len() && bytes[i] == 0xFF && bytes.get(i + 1) == Some(&0xFF) {
            i += 1; // fill bytes
        }
        let (Some(&0xFF), Some(&marker)) = (bytes.get(i), bytes.get(i + 1)) else {
            return false;
        };
        if matches!(marker, 0x01 | 0xD0..=0xD7) {
            i += 2; // markers without a length
            continue;
        }
        let Some(len) = bytes.get(i + 2..i + 4) else {
            return false;
        };
        let next = i + 2 + u16::from_be_bytes([len[0], len[1]]) as usize;
        if marker == 0xDA {
            break next;
        }
        i = next;
    };
    bytes
        .get(scan_start..)
        .is_some_and(|scan| scan.windows(2).any(|w| w == [0xFF, 0xD9]))
}

/// Most scans a progressive JPEG may have. Each scan walks every block of the image, so
/// thousands of near-empty scans make a small file cost minutes of CPU; real encoders write
/// about ten.
const MAX_JPEG_SCANS: usize = 256;

/// Start-of-scan markers in the file (inside entropy-coded data FF is always escaped, so each
/// FF DA is a real scan; the tables before the first scan hold none).
fn jpeg_scan_count(bytes: &[u8]) -> usize {
    bytes.windows(2).filter(|w| *w == [0xFF, 0xDA]).count()
}

/// Sniffs and checks the format and completeness of `bytes`.
fn check_container(bytes: &[u8]) -> Result<ImageFormat, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let format = image::guess_format(bytes).map_err(|_| DecodeError::UnknownFormat)?;
    match format {
        ImageFormat::Jpeg => {
            if !jpeg_has_end_of_image(bytes) {
                return Err(DecodeError::Truncated(
                    "JPEG",
                    "no end-of-image marker (FF D9)".into(),
                ));
            }
            let scans = jpeg_scan_count(bytes);
            if scans > MAX_JPEG_SCANS {
                return Err(DecodeError::Invalid(format!(
                    "the JPEG has {scans} scans, more than the {MAX_JPEG_SCANS} this server decodes"
                )));
            }
        }
        ImageFormat::Png => {
            // The IEND chunk: length 0, type "IEND", CRC AE 42 60 82.
            const IEND: [u8; 8] = [b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82];
            if !bytes
                .windows(IEND.len())
                .rev()
                .take(4096)
                .any(|w| w == IEND)
            {
                return Err(DecodeError::Truncated("PNG", "no IEND chunk".into()));
            }
        }
        ImageFormat::Gif => {
            if trim_trailing_zeros(bytes).last() != Some(&0x3B) {
                return Err(DecodeError::Truncated("GIF", "no trailer byte (3B)".into()));
            }
        }
        ImageFormat::WebP => {
            if bytes.len() < 12 {
                return Err(DecodeError::Truncated(
                    "WebP",
                    "shorter than its header".into(),
                ));
            }
            let riff = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as u64 + 8;
            if (bytes.len() as u64) < riff {
                return Err(DecodeError::Truncated(
                    "WebP",
                    format!("header says {riff} bytes, got {}", bytes.len()),
                ));
            }
        }
        ImageFormat::Bmp => {
            if bytes.len() < 14 {
                return Err(DecodeError::Truncated(
                    "BMP",
                    "shorter than its header".into(),
                ));
            }
            let size = u32::from_le_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]) as u64;
            if size != 0 && (bytes.len() as u64) < size {
                return Err(DecodeError::Truncated(
                    "BMP",
                    format!("header says {size} bytes, got {}", bytes.len()),
                ));
            }
        }
        other => {
            return Err(DecodeError::UnsupportedFormat(
                other
                    .extensions_str()
                    .first()
                    .copied()
                    .unwrap_or("this")
                    .to_uppercase(),
            ))
        }
    }
    Ok(format)
}

fn trim_trailing_zeros(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    &bytes[..end]
}

fn reader<'a>(
    bytes: &'a [u8],
    format: ImageFormat,
    limits: &DecodeLimits,
) -> ImageReader<Cursor<&'a [u8]>> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut l = image::Limits::default();
    l.max_alloc = Some(limits.max_alloc);
    reader.limits(l);
    reader
}

/// Reads the dimensions from the header only, after the container checks.
pub fn dimensions(bytes: &[u8], limits: &DecodeLimits) -> Result<(u32, u32), DecodeError> {
    let format = check_container(bytes)?;
    header_dimensions(bytes, format, limits)
}

fn header_dimensions(
    bytes: &[u8],
    format: ImageFormat,
    limits: &DecodeLimits,
) -> Result<(u32, u32), DecodeError> {
    let (w, h) = match png_ihdr_dimensions(bytes, format) {
        Some(dims) => dims,
        None => reader(bytes, format, limits)
            .into_dimensions()
            .map_err(map_image_error)?,
    };
    if w == 0 || h == 0 {
        return Err(DecodeError::ZeroSize(w, h));
    }
    let pixels = w as u64 * h as u64;
    if pixels > limits.max_pixels {
        return Err(DecodeError::TooLarge {
            width: w,
            height: h,
            pixels,
            max: limits.max_pixels,
        });
    }
    Ok((w, h))
}

/// A PNG's size straight from its IHDR chunk (always the first chunk, at a fixed offset).
/// The png crate only reports dimensions after finding image data, so a header-only PNG
/// claiming 100000 x 100000 would otherwise be "invalid" rather than "too large".
fn png_ihdr_dimensions(bytes: &[u8], format: ImageFormat) -> Option<(u32, u32)> {
    if format != ImageFormat::Png || bytes.len() < 24 || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let w = u32::from_be_bytes(bytes[16..20].try_into().ok()?);
    let h = u32::from_be_bytes(bytes[20..24].try_into().ok()?);
    Some((w, h))
}

fn map_image_error(e: image::ImageError) -> DecodeError {
    match e {
        image::ImageError::Limits(l) => DecodeError::Invalid(format!("decoder limit: {l}")),
        image::ImageError::Unsupported(u) => DecodeError::Invalid(u.to_string()),
        other => DecodeError::Invalid(other.to_string()),
    }
}

/// Decodes one image to RGB8 with its EXIF orientation applied, refusing anything
/// incomplete, empty or larger than `limits` before decoding it.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, DecodeError> {
    let format = check_container(bytes)?;
    let (w, h) = header_dimensions(bytes, format, limits)?;
    let mut decoder = reader(bytes, format, limits)
        .into_decoder()
        .map_err(map_image_error)?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = if format == ImageFormat::Jpeg {
        drop(decoder);
        // libjpeg-turbo first (bit-exact with PIL); the image crate for what it cannot
        // convert to RGB itself (e.g. CMYK).
        match decode_jpeg_libjpeg(bytes) {
            Ok(rgb) => DynamicImage::ImageRgb8(rgb),
            Err(_) => image::load_from_memory_with_format(bytes, ImageFormat::Jpeg)
                .map_err(map_image_error)?,
        }
    } else {
        DynamicImage::from_decoder(decoder).map_err(map_image_error)?
    };
    if img.width() != w || img.height() != h || img.width() == 0 || img.height() == 0 {
        return Err(DecodeError::Invalid(format!(
            "decoded size {}x{} differs from the header's {w}x{h}",
            img.width(),
            img.height()
        )));
    }
    img.apply_orientation(orientation);
    Ok(match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    })
}

/// Decodes a JPEG with libjpeg-turbo's algorithms (MozJPEG's decoder: ISLOW IDCT, fancy
/// upsampling), i.e. exactly the pixels PIL, and so the training pipeline and the PyTorch
/// reference, get. The pure-Rust decoder differs by up to 4 levels on 4:2:0 JPEGs, which
/// moves posteriors far more than the 1e-4 parity we promise.
fn decode_jpeg_libjpeg(bytes: &[u8]) -> Result<RgbImage, String> {
    // libjpeg reports fatal errors by unwinding (without running the panic hook).
    let result = std::panic::catch_unwind(|| -> std::io::Result<RgbImage> {
        let mut started = mozjpeg::Decompress::new_mem(bytes)?.rgb()?;
        let (w, h) = (started.width() as u32, started.height() as u32);
        let flat: Vec<u8> = started.read_scanlines::<u8>()?;
        started.finish()?;
        RgbImage::from_raw(w, h, flat)
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "short scanlines"))
    });
    match result {
        Ok(Ok(img)) => Ok(img),
        Ok(Err(e)) => Err(e.to_string()),
        Err(payload) => Err(payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_else(|| "libjpeg failed".to_string())),
    }
}

/// Resizes as the manifest says: shorter side to the target, then centre crop (or stretch).
pub fn resize_for(img: &RgbImage, manifest: &ModelManifest) -> RgbImage {
    let (tw, th) = (manifest.input.width, manifest.input.height);
    let (w, h) = img.dimensions();
    if (w, h) == (tw, th) {
        return img.clone();
    }
    match manifest.resize {
        ResizePolicy::Stretch => image::imageops::resize(img, tw, th, manifest.filter),
        ResizePolicy::ShorterSideThenCenterCrop => {
            // Cut the centre region that "shorter side to the target, then centre crop" keeps
            // from the source first, then resize only that: resizing the whole image first
            // would blow a thin image (1 x 40,000,000 px) up to billions of pixels.
            let scale = f64::max(tw as f64 / w as f64, th as f64 / h as f64);
            let cw = ((tw as f64 / scale).round() as u32).clamp(1, w);
            let ch = ((th as f64 / scale).round() as u32).clamp(1, h);
            let region = image::imageops::crop_imm(img, (w - cw) / 2, (h - ch) / 2, cw, ch);
            if (cw, ch) == (tw, th) {
                region.to_image()
            } else {
                image::imageops::resize(&*region, tw, th, manifest.filter)
            }
        }
    }
}

/// Resizes and lays out one image as CHW float32 in [0, 1]: `3 * height * width` values.
pub fn to_chw(img: &RgbImage, manifest: &ModelManifest) -> Vec<f32> {
    let img = resize_for(img, manifest);
    let (w, h) = img.dimensions();
    let plane = (w * h) as usize;
    let mut out = vec![0f32; 3 * plane];
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            let src = if manifest.bgr { 2 - c } else { c };
            out[c * plane + i] = px.0[src] as f32 / 255.0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
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
}
