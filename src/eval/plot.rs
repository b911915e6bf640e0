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

/// Colours of the risk-coverage curves, in rule order, and their names for the legend line.
const CURVE_COLOURS: [[u8; 3]; 4] = [[70, 110, 200], [220, 80, 70], [60, 160, 90], [150, 90, 180]];
pub const CURVE_COLOURS_NAMED: [&str; 4] = ["blue", "red", "green", "purple"];

/// Risk-coverage curves: x is the share of images answered (0 to 1), y the accuracy on them
/// (0.7 to 1, grid lines every 0.05), one curve per rule in [`CURVE_COLOURS`].
pub fn draw_risk_coverage(curves: &[Vec<(f64, f64)>]) -> RgbImage {
    const W: u32 = 480;
    const H: u32 = 360;
    const MARGIN: u32 = 20;
    const Y_MIN: f64 = 0.7;
    let mut img = RgbImage::from_pixel(W + 2 * MARGIN, H + 2 * MARGIN, Rgb([255, 255, 255]));
    let to_x = |v: f64| MARGIN + (v.clamp(0.0, 1.0) * (W - 1) as f64).round() as u32;
    let to_y = |v: f64| {
        let t = ((v - Y_MIN) / (1.0 - Y_MIN)).clamp(0.0, 1.0);
        MARGIN + H - 1 - (t * (H - 1) as f64).round() as u32
    };
    for step in 0..=10 {
        let grid = Rgb([225, 225, 225]);
        let x = to_x(step as f64 / 10.0);
        for y in MARGIN..MARGIN + H {
            img.put_pixel(x, y, grid);
        }
        if step <= 6 {
            let y = to_y(Y_MIN + step as f64 * 0.05);
            for x in MARGIN..MARGIN + W {
                img.put_pixel(x, y, grid);
            }
        }
    }
    for (curve, colour) in curves.iter().zip(CURVE_COLOURS.iter().cycle()) {
        let mut last: Option<(u32, u32)> = None;
        for &(share, acc) in curve {
            if acc.is_nan() {
                continue;
            }
            let (x, y) = (to_x(share), to_y(acc));
            let (x0, y0) = last.unwrap_or((x, y));
            // One pixel per step of the longer axis joins consecutive points.
            let steps = x.abs_diff(x0).max(y.abs_diff(y0)).max(1);
            for s in 0..=steps {
                let f = s as f64 / steps as f64;
                let px = (x0 as f64 + f * (x as f64 - x0 as f64)).round() as u32;
                let py = (y0 as f64 + f * (y as f64 - y0 as f64)).round() as u32;
                for (dx, dy) in [(0, 0), (1, 0), (0, 1)] {
                    img.put_pixel(
                        (px + dx).min(MARGIN + W - 1),
                        (py + dy).min(MARGIN + H - 1),
                        Rgb(*colour),
                    );
                }
            }
            last = Some((x, y));
        }
    }
    for t in 0..W {
        img.put_pixel(MARGIN + t, MARGIN + H - 1, Rgb([0, 0, 0]));
    }
    for t in 0..H {
        img.put_pixel(MARGIN, MARGIN + t, Rgb([0, 0, 0]));
    }
    img
}
