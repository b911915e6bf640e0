//! Cost of the vMF math alone (no encoder): `log_iv` per call, and balanced logits + posterior per
//! image for CIFAR-10 (10 x 128), a 1000-class model (1000 x 128) and an iNaturalist-2018-sized one
//! (8142 x 1024), at batch 1 and 64, for every rule. Inputs are random unit vectors from a fixed-seed
//! LCG. Run with `scripts/bench-vmf.sh`; results are in BENCHMARKS.md.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::Array2;
use proco_serve::vmf::{log_bessel_ratio, log_iv, posterior, Rule};

#[path = "../tests/synthetic/mod.rs"]
mod synthetic;
use synthetic::{random_model, Lcg};

fn bench_bessel(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_iv");
    // One point per branch of the dispatch: power series, ratio recurrence, Debye (small and large order).
    for (name, nu, x) in [
        ("series nu=0.5 x=5", 0.5, 5.0),
        ("recurrence nu=15 x=100", 15.0, 100.0),
        ("debye nu=63 x=606", 63.0, 606.3),
        ("debye nu=511 x=1e5", 511.0, 1e5),
    ] {
        group.bench_function(name, |b| b.iter(|| log_iv(black_box(nu), black_box(x))));
    }
    group.bench_function("ratio debye nu=63 x=606", |b| {
        b.iter(|| log_bessel_ratio(black_box(63.0), black_box(606.3)))
    });
    group.finish();
}

fn bench_posterior(c: &mut Criterion) {
    let mut rng = Lcg(0x5eed);
    for (classes, dim) in [(10usize, 128usize), (1000, 128), (8142, 1024)] {
        let m = random_model(&mut rng, classes, dim);
        let log_q = m.log_train_prior().to_vec();
        let mut group = c.benchmark_group(format!("posterior C={classes} p={dim}"));
        if classes * dim > 1_000_000 {
            group.sample_size(10);
        }
        for batch in [1usize, 64] {
            let z = Array2::from_shape_vec(
                (batch, dim),
                (0..batch)
                    .flat_map(|_| rng.unit(dim))
                    .map(|v| v as f32)
                    .collect(),
            )
            .unwrap();
            let f = Array2::from_shape_fn((batch, classes), |_| rng.normal() as f32);
            group.throughput(Throughput::Elements(batch as u64));
            for rule in Rule::ALL {
                group.bench_with_input(
                    BenchmarkId::new(rule.to_string(), format!("batch {batch}")),
                    &rule,
                    |b, &rule| {
                        b.iter(|| {
                            let g = m.balanced_logits(rule, z.view(), Some(f.view())).unwrap();
                            posterior(g.view(), 1.5, &log_q)
                        })
                    },
                );
            }
        }
        group.finish();
    }
}

/// The memory-bandwidth floor: streaming the largest prototype matrix (8142 x 1024 f64 = 66.7 MB)
/// once, as a read (sum) and as a STREAM-style copy, single-threaded like the rules.
fn bench_bandwidth(c: &mut Criterion) {
    let n = 8142 * 1024;
    let src: Vec<f64> = (0..n).map(|i| (i % 1000) as f64 * 1e-3).collect();
    let mut dst = vec![0.0f64; n];
    let mut group = c.benchmark_group("bandwidth 8142x1024 f64");
    group.sample_size(20);
    group.throughput(Throughput::Bytes((n * 8) as u64));
    group.bench_function("read (sum)", |b| {
        // Four accumulators so the loop is bound by memory, not by the add latency.
        b.iter(|| {
            let mut acc = [0.0f64; 4];
            for chunk in black_box(&src).chunks_exact(4) {
                for (a, v) in acc.iter_mut().zip(chunk) {
                    *a += v;
                }
            }
            acc.iter().sum::<f64>()
        })
    });
    group.throughput(Throughput::Bytes((2 * n * 8) as u64));
    group.bench_function("copy (read + write bytes)", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(dst[n / 2])
        })
    });
    group.finish();
}

criterion_group!(benches, bench_bessel, bench_posterior, bench_bandwidth);
criterion_main!(benches);
