//! The reliability diagram of `eval --reliability`: one panel per rule, drawn into an image.

use image::{Rgb, RgbImage};

use super::Bins;

/// Reliability diagrams: `grid[row][col]` holds one panel's bins. Bars (blue) are the accuracy per
/// confidence bin, the red part the gap up or down to the bin's mean confidence, black the diagonal.
pub fn draw_reliability(grid: &[Vec<Bins>]) -> RgbImage {
    const SIZE: u32 = 240;
    const MARGIN: u32 = 16;
    let rows = grid.len() as u32;
    let cols = grid.iter().map(Vec::len).max().unwrap_or(0) as u32;
    let mut img = RgbImage::from_pixel(
        cols * (SIZE + MARGIN) + MARGIN,
        rows * (SIZE + MARGIN) + MARGIN,
        Rgb([255, 255, 255]),
    );
    for (r, row) in grid.iter().enumerate() {
        for (c, bins) in row.iter().enumerate() {
            let x0 = MARGIN + c as u32 * (SIZE + MARGIN);
            let y0 = MARGIN + r as u32 * (SIZE + MARGIN);
            let to_y =
                |v: f64| y0 + SIZE - 1 - ((v.clamp(0.0, 1.0) * (SIZE - 1) as f64).round() as u32);
            let nb = bins.len().max(1) as u32;
            for (m, &(conf, acc, count)) in bins.iter().enumerate() {
                if count == 0 {
                    continue;
                }
                let xa = x0 + m as u32 * SIZE / nb + 1;
                let xb = x0 + (m as u32 + 1) * SIZE / nb - 1;
                for x in xa..xb {
                    for y in to_y(acc)..y0 + SIZE {
                        img.put_pixel(x, y, Rgb([70, 110, 200]));
                    }
                    let (lo, hi) = if conf > acc {
                        (to_y(conf), to_y(acc))
                    } else {
                        (to_y(acc), to_y(conf))
                    };
                    for y in lo..=hi {
                        img.put_pixel(x, y, Rgb([220, 80, 70]));
                    }
                }
            }
            for t in 0..SIZE {
                for d in 0..2 {
                    let x = (x0 + t + d).min(x0 + SIZE - 1);
                    img.put_pixel(x, y0 + SIZE - 1 - t, Rgb([0, 0, 0]));
                }
                for (x, y) in [
                    (x0 + t, y0),
                    (x0 + t, y0 + SIZE - 1),
                    (x0, y0 + t),
                    (x0 + SIZE - 1, y0 + t),
                ] {
                    img.put_pixel(x, y, Rgb([120, 120, 120]));
                }
            }
        }
    }
    img
}
