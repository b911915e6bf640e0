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
//! 5. resize as `model.toml` says (shorter side, then centre crop: with the bilinear filter
//!    exactly torchvision's `Resize` + `CenterCrop` on PIL images, see `pil.rs`) and lay out
//!    as CHW float32 in [0, 1] (normalisation is inside the ONNX graph).

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};

use crate::manifest::{ModelManifest, ResizePolicy};

pub mod dump;
mod pil;

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
    check_size(w, h, limits)?;
    Ok((w, h))
}

/// Refuses an empty image, or one of more than `max_pixels`, before it is decoded.
fn check_size(w: u32, h: u32, limits: &DecodeLimits) -> Result<(), DecodeError> {
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
    Ok(())
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
    if format == ImageFormat::Jpeg {
        if let Some(rgb) = decode_jpeg(bytes, limits)? {
            return Ok(rgb);
        }
    }
    let (w, h) = header_dimensions(bytes, format, limits)?;
    let mut decoder = reader(bytes, format, limits)
        .into_decoder()
        .map_err(map_image_error)?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    // (A JPEG gets here only when libjpeg could not give RGB: the image crate's decoder then.)
    let mut img = DynamicImage::from_decoder(decoder).map_err(map_image_error)?;
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

/// A JPEG through libjpeg-turbo alone, its header read once: the size, checked against the
/// limits before any pixel is decoded, and the EXIF orientation; then the pixels with
/// libjpeg-turbo's algorithms (MozJPEG's decoder: ISLOW IDCT, fancy upsampling), i.e. exactly
/// the pixels PIL, and so the training pipeline and the PyTorch reference, get. (The pure-Rust
/// decoder differs by up to 4 levels on 4:2:0 JPEGs, which moves posteriors far more than the
/// 1e-4 parity we promise.) `Ok(None)`: libjpeg cannot read this header or give RGB (CMYK, a
/// damaged file), and the image crate's decoder takes over, with its own errors.
fn decode_jpeg(bytes: &[u8], limits: &DecodeLimits) -> Result<Option<RgbImage>, DecodeError> {
    use image::metadata::Orientation;
    use mozjpeg::Marker;
    // libjpeg reports fatal errors by unwinding (without running the panic hook).
    let decoded = std::panic::catch_unwind(|| {
        let header = mozjpeg::Decompress::builder()
            .with_markers(&[Marker::APP(1)])
            .from_mem(bytes)
            .ok()?;
        let (w, h) = header.size();
        if let Err(refused) = check_size(w as u32, h as u32, limits) {
            return Some(Err(refused));
        }
        let orientation = header
            .markers()
            .find_map(|m| m.data.strip_prefix(b"Exif\0\0"))
            .and_then(Orientation::from_exif_chunk)
            .unwrap_or(Orientation::NoTransforms);
        let mut started = header.rgb().ok()?;
        let flat: Vec<u8> = started.read_scanlines::<u8>().ok()?;
        started.finish().ok()?;
        let rgb = RgbImage::from_raw(w as u32, h as u32, flat)?;
        Some(Ok((rgb, orientation)))
    });
    match decoded {
        Ok(Some(Ok((rgb, orientation)))) => {
            let mut img = DynamicImage::ImageRgb8(rgb);
            img.apply_orientation(orientation);
            Ok(Some(img.into_rgb8()))
        }
        Ok(Some(Err(refused))) => Err(refused),
        Ok(None) | Err(_) => Ok(None),
    }
}

/// Resizes as the manifest says: shorter side to `resize_shorter`, then centre crop (or stretch).
pub fn resize_for(img: &RgbImage, manifest: &ModelManifest) -> RgbImage {
    let (tw, th) = (manifest.input.width, manifest.input.height);
    let (w, h) = img.dimensions();
    if (w, h) == (tw, th) && manifest.resize_shorter == tw.max(th) {
        return img.clone();
    }
    match manifest.resize {
        ResizePolicy::Stretch => image::imageops::resize(img, tw, th, manifest.filter),
        ResizePolicy::ShorterSideThenCenterCrop if manifest.pil_bilinear => {
            pil::resize_then_center_crop(img, manifest.resize_shorter, tw, th)
        }
        ResizePolicy::ShorterSideThenCenterCrop => {
            // Cut the centre region that "shorter side to the target, then centre crop" keeps
            // from the source first, then resize only that: resizing the whole image first
            // would blow a thin image (1 x 40,000,000 px) up to billions of pixels.
            let scale = f64::max(
                f64::max(tw as f64 / w as f64, th as f64 / h as f64),
                manifest.resize_shorter as f64 / w.min(h) as f64,
            );
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

/// Untrusted bytes -> the encoder's input: [`decode`] with every check, then [`to_chw`]. The
/// server's front layer and `eval` both prepare images with this.
pub fn prepare(
    bytes: &[u8],
    limits: &DecodeLimits,
    manifest: &ModelManifest,
) -> Result<Vec<f32>, DecodeError> {
    decode(bytes, limits).map(|img| to_chw(&img, manifest))
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
mod tests;
