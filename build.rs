//! Provisions the ONNX Runtime shared library that `ort` loads at run time (`load-dynamic`).
//!
//! Why: `ort`'s own download cannot work offline or behind a proxy, and a system-wide
//! ONNX Runtime is rarely installed. The official PyPI wheel contains a self-contained
//! `libonnxruntime.so.1.31.1`, and `python3 -m pip` is the one tool we can rely on, so:
//!
//! 1. `python3 -m pip download --no-deps --only-binary=:all: onnxruntime==1.31.1` into
//!    `target/ort-cache/wheels` (once; the cache survives `cargo build` of other profiles);
//! 2. extract `onnxruntime/capi/libonnxruntime*.so*` from the wheel (a zip) into
//!    `target/ort-cache/<package>-1.31.1/`;
//! 3. copy the libraries next to the binaries: `target/<profile>/` (the server) and
//!    `target/<profile>/deps/` (test and bench executables), with a fixed old mtime so
//!    cargo never thinks anything downstream is stale because of them.
//!
//! The path is also baked into the binary as `PROCO_ORT_DYLIB_BUILD` as a last resort.
//! At run time `ORT_DYLIB_PATH` overrides everything (see `src/encoder.rs`).
//!
//! GPU builds: set `PROCO_ORT_WHEEL=onnxruntime-gpu` to take the CUDA 13 wheel instead
//! (it also ships `libonnxruntime_providers_cuda.so`, which must sit next to
//! `libonnxruntime.so`; we copy every `libonnxruntime*` file). CUDA and cuDNN themselves
//! are not in the wheel and must be installed on the machine.
//!
//! If provisioning fails (no network, no python), the build does NOT fail: it prints a
//! cargo warning, and the server refuses to start with a clear message that says how to
//! point `ORT_DYLIB_PATH` at a library.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

const ORT_VERSION: &str = "1.31.1";

/// Generates the gRPC server code of `proto/inference.proto` (the Open Inference Protocol's
/// GRPCInferenceService) with protox, a protobuf compiler in Rust: no system `protoc` needed.
fn compile_grpc() {
    println!("cargo:rerun-if-changed=proto/inference.proto");
    let fds = protox::compile(["proto/inference.proto"], ["proto"])
        .unwrap_or_else(|e| panic!("proto/inference.proto does not compile: {e}"));
    tonic_prost_build::configure()
        .build_client(false)
        .compile_fds(fds)
        .unwrap_or_else(|e| panic!("cannot generate the gRPC code: {e}"));
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    compile_grpc();
    println!("cargo:rerun-if-env-changed=ORT_DYLIB_PATH");
    println!("cargo:rerun-if-env-changed=PROCO_ORT_WHEEL");
    println!("cargo:rerun-if-env-changed=PROCO_SKIP_ORT_DOWNLOAD");

    if let Err(e) = provision() {
        println!("cargo:warning=could not provision libonnxruntime.so.{ORT_VERSION}: {e}");
        println!(
            "cargo:warning=the server will need ORT_DYLIB_PATH=/path/to/libonnxruntime.so.{ORT_VERSION} at run time"
        );
        println!("cargo:rustc-env=PROCO_ORT_DYLIB_BUILD=");
        println!("cargo:rustc-env=PROCO_ORT_WHEEL_BUILD=");
    }
}

fn provision() -> Result<(), String> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| e.to_string())?);
    // OUT_DIR = <target>/<profile>/build/<pkg>-<hash>/out
    let profile_dir = out_dir
        .ancestors()
        .nth(3)
        .ok_or("unexpected OUT_DIR layout")?
        .to_path_buf();
    let target_dir = profile_dir
        .parent()
        .ok_or("unexpected OUT_DIR layout")?
        .to_path_buf();

    if std::env::var_os("ORT_DYLIB_PATH").is_some_and(|p| !p.is_empty()) {
        // The user brings their own library; nothing to provision.
        println!("cargo:rustc-env=PROCO_ORT_DYLIB_BUILD=");
        println!("cargo:rustc-env=PROCO_ORT_WHEEL_BUILD=");
        return Ok(());
    }
    if std::env::var_os("PROCO_SKIP_ORT_DOWNLOAD").is_some_and(|v| v == "1") {
        return Err("PROCO_SKIP_ORT_DOWNLOAD=1".into());
    }

    let package = std::env::var("PROCO_ORT_WHEEL").unwrap_or_else(|_| "onnxruntime".to_string());
    if package != "onnxruntime" && package != "onnxruntime-gpu" {
        return Err(format!(
            "PROCO_ORT_WHEEL must be onnxruntime or onnxruntime-gpu, got {package:?}"
        ));
    }
    let cache = target_dir
        .join("ort-cache")
        .join(format!("{package}-{ORT_VERSION}"));
    let main_lib = format!("libonnxruntime.so.{ORT_VERSION}");
    if !cache.join(&main_lib).is_file() {
        let wheels = target_dir.join("ort-cache").join("wheels");
        fs::create_dir_all(&wheels).map_err(|e| format!("create {}: {e}", wheels.display()))?;
        let wheel = match find_wheel(&wheels, &package) {
            Some(w) => w,
            None => {
                download_wheel(&package, &wheels)?;
                find_wheel(&wheels, &package).ok_or_else(|| {
                    format!(
                        "pip reported success but no {package} wheel in {}",
                        wheels.display()
                    )
                })?
            }
        };
        extract_libraries(&wheel, &cache)?;
        if !cache.join(&main_lib).is_file() {
            return Err(format!(
                "{} has no onnxruntime/capi/{main_lib}",
                wheel.display()
            ));
        }
    }

    let mut libs = Vec::new();
    for entry in fs::read_dir(&cache).map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        libs.push(entry.path());
    }
    for dest_dir in [profile_dir.clone(), profile_dir.join("deps")] {
        fs::create_dir_all(&dest_dir).map_err(|e| e.to_string())?;
        for lib in &libs {
            copy_if_different(lib, &dest_dir.join(lib.file_name().unwrap()))?;
        }
    }
    println!(
        "cargo:rustc-env=PROCO_ORT_DYLIB_BUILD={}",
        cache.join(&main_lib).display()
    );
    // Which wheel the library came from (the tests know whether CUDA can exist).
    println!("cargo:rustc-env=PROCO_ORT_WHEEL_BUILD={package}");
    Ok(())
}

fn find_wheel(dir: &Path, package: &str) -> Option<PathBuf> {
    // Wheel file names use underscores: onnxruntime_gpu-1.31.1-....whl
    let prefix = format!("{}-{ORT_VERSION}-", package.replace('-', "_"));
    fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name.starts_with(&prefix) && name.ends_with(".whl")).then(|| e.path())
        })
}

fn download_wheel(package: &str, dest: &Path) -> Result<(), String> {
    let spec = format!("{package}=={ORT_VERSION}");
    let mut last_err = String::new();
    for python in ["python3", "python"] {
        let out = Command::new(python)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--quiet",
            ])
            .arg(&spec)
            .arg("-d")
            .arg(dest)
            .output();
        match out {
            Ok(o) if o.status.success() => return Ok(()),
            Ok(o) => {
                last_err = format!(
                    "`{python} -m pip download {spec}` failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                )
            }
            Err(e) => last_err = format!("cannot run {python}: {e}"),
        }
    }
    Err(last_err)
}

fn extract_libraries(wheel: &Path, cache: &Path) -> Result<(), String> {
    let file = fs::File::open(wheel).map_err(|e| format!("open {}: {e}", wheel.display()))?;
    let mut archive =
        zip::ZipArchive::new(file).map_err(|e| format!("read {}: {e}", wheel.display()))?;
    fs::create_dir_all(cache).map_err(|e| e.to_string())?;
    let names: Vec<String> = archive
        .file_names()
        .filter(|n| n.starts_with("onnxruntime/capi/libonnxruntime") && n.contains(".so"))
        .map(str::to_string)
        .collect();
    for name in names {
        let mut entry = archive.by_name(&name).map_err(|e| e.to_string())?;
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
        let file_name = Path::new(&name).file_name().unwrap();
        // Write to a temporary name, then rename: a concurrent or interrupted build never
        // sees a half-written library.
        let tmp = cache.join(format!(".{}.tmp", file_name.to_string_lossy()));
        let mut f = fs::File::create(&tmp).map_err(|e| e.to_string())?;
        f.write_all(&bytes).map_err(|e| e.to_string())?;
        drop(f);
        fs::rename(&tmp, cache.join(file_name)).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn copy_if_different(src: &Path, dest: &Path) -> Result<(), String> {
    let src_len = fs::metadata(src).map_err(|e| e.to_string())?.len();
    if fs::metadata(dest).map(|m| m.len()).ok() == Some(src_len) {
        return Ok(());
    }
    let tmp = dest.with_extension("proco-tmp");
    fs::copy(src, &tmp).map_err(|e| format!("copy to {}: {e}", tmp.display()))?;
    // A fixed, old mtime: the library never looks newer than anything cargo compares it to.
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    if let Ok(f) = fs::File::options().write(true).open(&tmp) {
        let _ = f.set_modified(old);
    }
    fs::rename(&tmp, dest).map_err(|e| e.to_string())?;
    Ok(())
}
