//! The kernels' source and its compilation: `kernels.cu` and the names of its per-format
//! kernels, NVRTC (found through `YANGTUO_NVRTC_DIR` or by name), the compile options, and
//! the on-disk PTX cache that spares NVRTC on later runs.
//!
//! A leaf: it knows the source, not the backend that loads it.

use crate::weights::WeightFormat;
use crate::{Error, Result};
use cudarc::nvrtc::{CompileError, CompileOptions, Ptx};

/// The CUDA C source of every kernel.
pub const SOURCE: &str = include_str!("kernels.cu");

/// Weight formats with kernels, and their names in `kernels.cu` (`mv_<name>`, ...).
pub(super) const FORMATS: [(WeightFormat, &str); 9] = [
    (WeightFormat::F32, "f32"),
    (WeightFormat::F16, "f16"),
    (WeightFormat::BF16, "bf16"),
    (WeightFormat::Q8_0, "q8_0"),
    (WeightFormat::Q4_0, "q4_0"),
    (WeightFormat::Q4_1, "q4_1"),
    (WeightFormat::Gptq4, "gptq4"),
    (WeightFormat::Q4K, "q4_k"),
    (WeightFormat::Q6K, "q6_k"),
];

/// The position of `f` in `FORMATS` (so in the per-format kernel tables), if it has kernels.
pub(super) fn format_index(f: WeightFormat) -> Option<usize> {
    FORMATS.iter().position(|(g, _)| *g == f)
}

/// The NVRTC options for `arch` (`compute_80`, ...).
fn compile_options(arch: &str) -> CompileOptions {
    CompileOptions {
        options: vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()],
        name: Some("yangtuo_kernels.cu".into()),
        ..Default::default()
    }
}

/// Load NVRTC (and its builtins library, which it opens by name) from `YANGTUO_NVRTC_DIR`,
/// so cudarc's later look-up by name finds the already loaded library.
fn preload_nvrtc() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(dir) = std::env::var("YANGTUO_NVRTC_DIR") else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(&dir) else {
            log::warn!("YANGTUO_NVRTC_DIR={dir} cannot be read");
            return;
        };
        let mut names: Vec<std::path::PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                (n.starts_with("libnvrtc.so") || n.starts_with("libnvrtc-builtins.so"))
                    && !n.contains(".alt.")
            })
            .collect();
        // builtins first: NVRTC opens them by soname at its first compile
        names.sort_by_key(|p| !p.to_string_lossy().contains("builtins"));
        for p in names {
            // SAFETY: loading NVRTC runs only its initializers; the handle is kept for the
            // life of the process (cudarc holds NVRTC as long).
            let lib = unsafe {
                libloading::os::unix::Library::open(
                    Some(&p),
                    libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
                )
            };
            match lib {
                Ok(lib) => std::mem::forget(lib),
                Err(e) => log::warn!("loading {}: {e}", p.display()),
            }
        }
    });
}

/// Whether NVRTC can be loaded (after `YANGTUO_NVRTC_DIR`).
pub fn nvrtc_available() -> bool {
    preload_nvrtc();
    // SAFETY: only tries to dlopen the library by its candidate names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// NVRTC's version, e.g. (13, 0).
pub fn nvrtc_version() -> Option<(i32, i32)> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two out-pointers to live integers.
    let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    (r == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS).then_some((major, minor))
}

/// Compile `kernels.cu` to PTX for `arch` (`compute_80`, `compute_90`, ...). Needs NVRTC,
/// not a GPU.
pub fn compile(arch: &str) -> std::result::Result<Ptx, String> {
    if !nvrtc_available() {
        return Err("NVRTC (libnvrtc.so) was not found: set YANGTUO_NVRTC_DIR or LD_LIBRARY_PATH to a folder \
                    holding it (the CUDA toolkit's lib64, or pip's nvidia/cu13/lib from `pip install \
                    nvidia-cuda-nvrtc`)"
            .into());
    }
    cudarc::nvrtc::compile_ptx_with_opts(SOURCE, compile_options(arch)).map_err(|e| match e {
        CompileError::CompileError { log, .. } => format!(
            "kernels.cu does not compile for {arch}:\n{}",
            log.to_string_lossy()
        ),
        other => format!("NVRTC: {other:?}"),
    })
}

/// Where the PTX of `arch` is cached: `$XDG_CACHE_HOME/yangtuo` (else `~/.cache/yangtuo`),
/// named by a hash of the source and the compile options, so an edited kernel never loads
/// stale code. A PTX file compiled elsewhere can be placed there ahead of time
/// (scripts/device-prepare.sh does), and then no NVRTC is needed at all.
pub fn cache_file(base: Option<&std::path::Path>, arch: &str) -> Option<std::path::PathBuf> {
    // FNV-1a, stable across builds (unlike std's hasher)
    let mut h: u64 = 0xcbf29ce484222325;
    for b in SOURCE
        .bytes()
        .chain(compile_options(arch).options.join(" ").into_bytes())
    {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    let base = match base {
        Some(b) => b.to_path_buf(),
        None => std::env::var_os("XDG_CACHE_HOME")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache"))
            })?,
    };
    Some(
        base.join("yangtuo")
            .join(format!("kernels-{arch}-{h:016x}.ptx")),
    )
}

/// Write `ptx` to `file` (atomically; failures only cost a recompile next time).
pub fn write_cache(file: &std::path::Path, ptx: &Ptx) {
    let tmp = file.with_extension(format!("tmp{}", std::process::id()));
    let ok = file
        .parent()
        .is_some_and(|d| std::fs::create_dir_all(d).is_ok())
        && std::fs::write(&tmp, ptx.to_src()).is_ok()
        && std::fs::rename(&tmp, file).is_ok();
    if !ok {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// The kernels' PTX for `arch`: from the cache when there (true), else compiled by NVRTC
/// and cached (false).
pub(super) fn compile_cached(arch: &str) -> Result<(Ptx, bool)> {
    let file = cache_file(None, arch);
    if let Some(src) = file.as_ref().and_then(|f| std::fs::read_to_string(f).ok()) {
        return Ok((Ptx::from_src(src), true));
    }
    let t = std::time::Instant::now();
    let ptx = compile(arch).map_err(Error::Device)?;
    log::info!(
        "cuda: compiled the kernels for {arch} in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    if let Some(file) = file {
        write_cache(&file, &ptx);
    }
    Ok((ptx, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// kernels.cu compiles for Ampere and Hopper. Needs NVRTC (YANGTUO_NVRTC_DIR or
    /// LD_LIBRARY_PATH), not a GPU; skipped with a message where NVRTC is absent.
    #[test]
    fn kernels_compile_with_nvrtc() {
        if !nvrtc_available() {
            eprintln!(
                "skipped: NVRTC not found (pip install 'nvidia-cuda-nvrtc==13.0.*' and set YANGTUO_NVRTC_DIR to its \
                 nvidia/cu13/lib)"
            );
            return;
        }
        for arch in ["compute_80", "compute_90"] {
            let t = std::time::Instant::now();
            let ptx = compile(arch).unwrap_or_else(|e| panic!("{e}"));
            let src = ptx.to_src();
            for (_, f) in FORMATS {
                for k in ["mv", "glu", "mmtc", "mm", "embed"] {
                    assert!(
                        src.contains(&format!(".entry {k}_{f}(")),
                        "{arch}: no kernel {k}_{f}"
                    );
                }
            }
            for k in ["store_kv", "rope_store", "attention"] {
                for name in [k.to_string(), format!("{k}_f16")] {
                    assert!(
                        src.contains(&format!(".entry {name}(")),
                        "{arch}: no kernel {name}"
                    );
                }
            }
            assert!(
                src.contains("mma.sync.aligned.m16n8k16"),
                "{arch}: no tensor-core product"
            );
            assert!(
                src.contains(".entry quantize_q8(") && src.contains("dp4a.s32.s32"),
                "{arch}: no Q8-activation decode"
            );
            // scripts/device-prepare.sh stages these for a GPU machine without NVRTC
            if let Some(base) = std::env::var_os("YANGTUO_PTX_OUT") {
                let file = cache_file(Some(std::path::Path::new(&base)), arch).unwrap();
                write_cache(&file, &ptx);
                println!("wrote {}", file.display());
            }
            println!(
                "{arch}: {} KiB of PTX in {:.1} s (nvrtc {:?})",
                src.len() >> 10,
                t.elapsed().as_secs_f64(),
                nvrtc_version()
            );
        }
    }
}
