//! torchvision's `Resize(shorter)` then `CenterCrop(height, width)` on a PIL image with the
//! bilinear filter, reproduced pixel for pixel.
//!
//! Every official ProCo model (and most PyTorch image models) was evaluated through exactly these
//! two transforms, so the server must hand the encoder the same pixels: a resize that differs by
//! one grey level here and there moves posteriors by far more than the 1e-5 parity we promise.
//! The `image` crate's triangle filter is not that resize (float accumulation, its own rounding),
//! so this is PIL's algorithm (`libImaging/Resample.c`): separable, antialiased when it shrinks
//! (the kernel widens by the scale), coefficients normalised in double precision and then held as
//! 22-bit fixed point, a horizontal pass rounded to 8 bits, then a vertical one.
//!
//! Only the pixels the centre crop keeps are computed: each output pixel's taps depend on its
//! index and the whole image's scale alone, so computing a window of the full resize is exact,
//! and a 1 x 40,000,000 image never becomes billions of pixels.

use std::ops::Range;

use image::RgbImage;

/// PIL's fixed-point precision for 8-bit images: 32 - 8 - 2 bits.
const PRECISION_BITS: u32 = 22;

/// torchvision's size for `Resize(shorter)`: the shorter side becomes `shorter`, the longer
/// `int(shorter * long / short)` (truncated, in double precision as Python computes it).
pub fn resized_size(w: u32, h: u32, shorter: u32) -> (u64, u64) {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = (shorter as f64 * long as f64 / short as f64) as u64;
    if w <= h {
        (shorter as u64, new_long)
    } else {
        (new_long, shorter as u64)
    }
}

/// torchvision's `CenterCrop` offset: `int(round((size - crop) / 2))`, Python's round (half to even).
fn center_offset(size: u64, crop: u32) -> u64 {
    ((size as f64 - crop as f64) / 2.0)
        .round_ties_even()
        .max(0.0) as u64
}

/// The bilinear (triangle) kernel.
fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// One output pixel's taps: the first source index and the fixed-point weights.
struct Taps {
    first: usize,
    weights: Vec<i32>,
}

/// PIL's `precompute_coeffs` + `normalize_coeffs_8bpc` for the outputs in `outputs` of a resize
/// from `in_size` to `out_size`.
fn coefficients(in_size: u32, out_size: u64, outputs: Range<u64>) -> Vec<Taps> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // the triangle's support is 1
    let one = (1u64 << PRECISION_BITS) as f64;
    outputs
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) truncates toward zero, as `as` does.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
            let raw: Vec<f64> = (xmin..xmax.max(xmin))
                .map(|x| triangle((x as f64 - center + 0.5) / filterscale))
                .collect();
            let sum: f64 = raw.iter().sum();
            let weights = raw
                .iter()
                .map(|&k| {
                    let k = if sum != 0.0 { k / sum } else { k };
                    if k < 0.0 {
                        (-0.5 + k * one) as i32
                    } else {
                        (0.5 + k * one) as i32
                    }
                })
                .collect();
            Taps {
                first: xmin as usize,
                weights,
            }
        })
        .collect()
}

/// One channel of one output pixel: `at(i)` is the i-th source sample under the taps.
fn apply(taps: &Taps, at: impl Fn(usize) -> u8) -> u8 {
    let mut acc: i64 = 1 << (PRECISION_BITS - 1);
    for (i, &k) in taps.weights.iter().enumerate() {
        acc += at(taps.first + i) as i64 * k as i64;
    }
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// `CenterCrop((height, width))(Resize(shorter)(img))` with PIL's bilinear filter. The caller
/// keeps `shorter >= max(width, height)`, so the crop never needs padding.
pub fn resize_then_center_crop(img: &RgbImage, shorter: u32, width: u32, height: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let (nw, nh) = resized_size(w, h, shorter);
    let (left, top) = (center_offset(nw, width), center_offset(nh, height));
    // PIL skips a pass whose size does not change; then the crop window is the source's own.
    let cols = (nw != w as u64).then(|| coefficients(w, nw, left..left + width as u64));
    let rows = (nh != h as u64).then(|| coefficients(h, nh, top..top + height as u64));
    let source_rows = match &rows {
        Some(r) => {
            r[0].first
                ..r.iter()
                    .map(|t| t.first + t.weights.len())
                    .max()
                    .unwrap_or(0)
        }
        None => top as usize..top as usize + height as usize,
    };
    // Horizontal pass over the source rows the vertical pass reads, rounded to 8 bits as PIL.
    let stride = width as usize;
    let mut mid = vec![[0u8; 3]; stride * source_rows.len()];
    for (r, y) in source_rows.clone().enumerate() {
        for x in 0..stride {
            mid[r * stride + x] = match &cols {
                Some(c) => std::array::from_fn(|ch| {
                    apply(&c[x], |sx| img.get_pixel(sx as u32, y as u32)[ch])
                }),
                None => img.get_pixel(left as u32 + x as u32, y as u32).0,
            };
        }
    }
    let y0 = source_rows.start;
    RgbImage::from_fn(width, height, |x, y| {
        let x = x as usize;
        image::Rgb(match &rows {
            Some(r) => std::array::from_fn(|ch| {
                apply(&r[y as usize], |sy| mid[(sy - y0) * stride + x][ch])
            }),
            None => mid[y as usize * stride + x],
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_offsets_follow_torchvision() {
        // Resize(256) of a 500 x 375 photo: 341 x 256 (int(256 * 500 / 375) = 341).
        assert_eq!(resized_size(500, 375, 256), (341, 256));
        assert_eq!(resized_size(375, 500, 256), (256, 341));
        // (341 - 224) / 2 = 58.5: Python's round gives 58, not 59.
        assert_eq!(center_offset(341, 224), 58);
        assert_eq!(center_offset(343, 224), 60);
        // A 1 x 40,000,000 image: the long side does not overflow.
        assert_eq!(resized_size(1, 40_000_000, 256), (256, 10_240_000_000));
    }

    #[test]
    fn a_same_size_image_is_returned_unchanged_and_a_flat_one_stays_flat() {
        let img = RgbImage::from_fn(32, 32, |x, y| image::Rgb([x as u8, y as u8, (x * y) as u8]));
        assert_eq!(resize_then_center_crop(&img, 32, 32, 32), img);
        let flat = RgbImage::from_pixel(517, 381, image::Rgb([200, 17, 99]));
        let out = resize_then_center_crop(&flat, 256, 224, 224);
        assert_eq!(out.dimensions(), (224, 224));
        assert!(out.pixels().all(|p| p.0 == [200, 17, 99]));
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (n, out) in [(500u32, 341u64), (37, 256), (4000, 256), (256, 256)] {
            for t in coefficients(n, out, 0..out) {
                let sum: i64 = t.weights.iter().map(|&k| k as i64).sum();
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= t.weights.len() as i64,
                    "{n}->{out}: {sum}"
                );
            }
        }
    }
}
