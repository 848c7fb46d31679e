//! Opening a GPU: the driver, a context, the kernels compiled for the device's architecture, and
//! per rank a stream with its own cuBLAS handle. Every absence (no driver, no device, no cuBLAS
//! or NVRTC library) is an error naming what is missing and where it was looked for; cudarc
//! would panic on a missing library, so presence is checked before anything is loaded.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::sync::Arc;

use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaStream};
use cudarc::nvrtc::Ptx;

use crate::RuntimeError;

/// The kernels' CUDA C source (`kernels.cu`).
pub const SOURCE: &str = include_str!("kernels.cu");

/// Every kernel the backend launches, by its `extern "C"` name in [`SOURCE`].
pub const KERNELS: [&str; 28] = [
    "add_into",
    "add_bias",
    "col_sum",
    "layer_norm_fwd",
    "layer_norm_bwd",
    "gelu_fwd",
    "gelu_bwd",
    "rms_norm_fwd",
    "rms_norm_bwd",
    "act_fwd",
    "act_bwd",
    "gated_fwd",
    "gated_bwd",
    "rope",
    "repeat_heads",
    "sum_heads",
    "attn_softmax",
    "attn_softmax_bwd",
    "gather_rows",
    "scatter_rows",
    "scatter_add_rows",
    "cross_entropy",
    "vocab_stats",
    "vocab_ce_grad",
    "moe_combine",
    "moe_combine_bwd",
    "adam",
    "to_bf16",
];

pub(crate) fn device_err(what: &str, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Device(format!("{what}: {e}"))
}

/// The file names cudarc tries for `lib`, each once.
pub(crate) fn tried(lib: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in cudarc::get_lib_name_candidates(lib) {
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

fn missing(lib: &str, candidates: &[String]) -> RuntimeError {
    RuntimeError::Device(format!(
        "{lib} could not be opened (tried {}); put its directory on LD_LIBRARY_PATH, or start \
         through `hetpar launch` or scripts/device-check.sh, which find pip's nvidia-* wheels",
        candidates.join(", ")
    ))
}

/// Whether NVRTC can be opened (no device needed to compile).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to open the library; nothing is called through it.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// The kernels compiled for `arch` (`sm_90`, `compute_80`, ...): a CUBIN for a real
/// architecture, PTX for a virtual one. Needs NVRTC only, not a device. Fused multiply-adds are
/// off so each operation rounds as the CPU reference's does.
pub fn compile(arch: &str) -> Result<Ptx, RuntimeError> {
    use cudarc::nvrtc::{result, sys};
    if !nvrtc_present() {
        return Err(missing("NVRTC", &tried("nvrtc")));
    }
    let src = CString::new(SOURCE).expect("the kernel source has no NUL");
    let name = CString::new("hetpar_kernels.cu").expect("no NUL");
    let prog = result::create_program(&src, Some(&name)).map_err(|e| device_err("NVRTC", e))?;
    // No language standard pinned: the kernels are plain C, and NVRTC releases drop old ones.
    let options = [
        format!("--gpu-architecture={arch}"),
        "--fmad=false".to_string(),
    ];
    // SAFETY: `prog` was just created and is destroyed once, below, on every path.
    let out = unsafe {
        let compiled = result::compile_program(prog, &options);
        let image = match compiled {
            Err(e) => {
                let log = result::get_program_log(prog)
                    .map(|l| CStr::from_ptr(l.as_ptr()).to_string_lossy().into_owned())
                    .unwrap_or_default();
                Err(RuntimeError::Device(format!(
                    "NVRTC could not compile the kernels for {arch}: {e}\n{log}"
                )))
            }
            Ok(()) if arch.starts_with("sm_") => {
                let mut size = 0usize;
                sys::nvrtcGetCUBINSize(prog, &mut size)
                    .result()
                    .map_err(|e| device_err("NVRTC CUBIN size", e))?;
                let mut bin = vec![0u8; size];
                sys::nvrtcGetCUBIN(prog, bin.as_mut_ptr().cast())
                    .result()
                    .map_err(|e| device_err("NVRTC CUBIN", e))?;
                Ok(Ptx::from_binary(bin))
            }
            Ok(()) => {
                let ptx = result::get_ptx(prog).map_err(|e| device_err("NVRTC PTX", e))?;
                let text = CStr::from_ptr(ptx.as_ptr()).to_string_lossy().into_owned();
                Ok(Ptx::from_src(text))
            }
        };
        let _ = result::destroy_program(prog);
        image
    };
    out
}

/// One GPU, shared by the ranks (threads) that run on it: its context and loaded kernels.
pub struct Device {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) kernels: BTreeMap<&'static str, CudaFunction>,
    /// The device's name as the driver reports it.
    pub name: String,
    /// Compute capability (major, minor).
    pub arch: (i32, i32),
    /// Total memory in bytes.
    pub memory: usize,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Device({}, sm_{}{}, GPU {})",
            self.name,
            self.arch.0,
            self.arch.1,
            self.ctx.ordinal()
        )
    }
}

impl Device {
    /// The GPUs the driver sees (an error if there is no driver).
    pub fn count() -> Result<usize, RuntimeError> {
        // SAFETY: only tries to open the library.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(RuntimeError::Device(format!(
                "the NVIDIA driver library could not be opened (tried {}): no GPU here",
                tried("cuda").join(", ")
            )));
        }
        let n = CudaContext::device_count().map_err(|e| device_err("CUDA driver", e))?;
        Ok(n.max(0) as usize)
    }

    /// Opens GPU `ordinal`: checks the driver and libraries, creates the context, compiles and
    /// loads the kernels.
    pub fn open(ordinal: usize) -> Result<Arc<Device>, RuntimeError> {
        let count = Device::count()?;
        // SAFETY: only tries to open the library.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(missing("cuBLAS", &tried("cublas")));
        }
        if ordinal >= count {
            return Err(RuntimeError::Device(format!(
                "GPU {ordinal} asked for, but the driver sees {count}"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| device_err("CUDA context", e))?;
        let arch = ctx
            .compute_capability()
            .map_err(|e| device_err("compute capability", e))?;
        let name = ctx.name().map_err(|e| device_err("device name", e))?;
        let memory = ctx
            .total_mem()
            .map_err(|e| device_err("device memory", e))?;
        let image = compile(&format!("sm_{}{}", arch.0, arch.1))?;
        let module = ctx
            .load_module(image)
            .map_err(|e| device_err("loading the kernels", e))?;
        let mut kernels = BTreeMap::new();
        for k in KERNELS {
            let f = module
                .load_function(k)
                .map_err(|e| device_err(&format!("kernel {k}"), e))?;
            kernels.insert(k, f);
        }
        Ok(Arc::new(Device {
            ctx,
            kernels,
            name,
            arch,
            memory,
        }))
    }

    /// A rank's view of this device: its own stream and cuBLAS handle.
    pub fn rank(self: &Arc<Device>) -> Result<Gpu, RuntimeError> {
        let stream = self
            .ctx
            .new_stream()
            .map_err(|e| device_err("CUDA stream", e))?;
        let blas = CudaBlas::new(stream.clone()).map_err(|e| device_err("cuBLAS handle", e))?;
        Ok(Gpu {
            dev: self.clone(),
            stream,
            blas,
            precision: super::ops::Precision::F32,
        })
    }
}

/// One rank's handle on a GPU: every operation of `ops.rs` is queued on its stream.
pub struct Gpu {
    pub(crate) dev: Arc<Device>,
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) blas: CudaBlas,
    /// The matrix products' input precision.
    pub(crate) precision: super::ops::Precision,
}

impl Gpu {
    /// The same rank with its matrix products' inputs in `precision`.
    pub fn with_precision(mut self, precision: super::ops::Precision) -> Gpu {
        self.precision = precision;
        self
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub(crate) fn kernel(&self, name: &'static str) -> &CudaFunction {
        self.dev
            .kernels
            .get(name)
            .unwrap_or_else(|| panic!("kernel {name} is in KERNELS, so it was loaded"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_kernel_is_defined_in_the_source() {
        for k in KERNELS {
            assert!(
                SOURCE.contains(&format!("__global__ void {k}(")),
                "{k} is listed but not defined in kernels.cu"
            );
        }
        let defined = SOURCE.matches("extern \"C\" __global__ void ").count();
        assert_eq!(defined, KERNELS.len(), "every defined kernel is listed");
    }

    #[test]
    fn the_kernels_compile_for_hopper_and_ampere() {
        if !nvrtc_present() {
            eprintln!(
                "skipped: NVRTC is not on this machine (.ci/run installs pip's \
                 nvidia-cuda-nvrtc-cu12 and puts it on LD_LIBRARY_PATH)"
            );
            return;
        }
        for arch in ["sm_90", "sm_80", "compute_80"] {
            if let Err(e) = compile(arch) {
                panic!("{e}");
            }
        }
    }

    #[test]
    fn opening_a_gpu_without_a_driver_is_an_error_not_a_panic() {
        // SAFETY: only tries to open the library.
        if unsafe { cudarc::driver::sys::is_culib_present() } {
            eprintln!("skipped: this machine has an NVIDIA driver");
            return;
        }
        let e = Device::open(0).expect_err("no driver, no device");
        assert!(e.to_string().contains("NVIDIA driver"), "{e}");
    }
}
