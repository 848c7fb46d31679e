//! What the operations of `ops.rs` need from a device, as a trait: memory, kernel launches by
//! name with their arguments, and cuBLAS's strided batched product. [`Gpu`] is the real one
//! (cudarc); the tests' emulated device (`emulated.rs`) runs the same `kernels.cu` compiled for
//! the CPU and the product by its cuBLAS definition, so everything `ops.rs` decides (launch
//! shapes, argument lists, leading dimensions, strides) is checked on machines without a GPU.

use cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits};

use super::device::{device_err, Gpu};
use super::ops::Precision;
use crate::RuntimeError;

/// A value type that lives in device memory.
pub trait Elem:
    DeviceRepr + ValidAsZeroBits + Copy + Default + Unpin + Send + Sync + 'static
{
}
impl Elem for f32 {}
impl Elem for f64 {}
impl Elem for i32 {}
impl Elem for i64 {}
impl Elem for u16 {}

/// One kernel argument, in the order of the kernel's C parameters.
pub enum Arg<'a, E: Engine + ?Sized> {
    F32(&'a E::Buf<f32>),
    F32Mut(&'a mut E::Buf<f32>),
    F64(&'a E::Buf<f64>),
    F64Mut(&'a mut E::Buf<f64>),
    I32s(&'a E::Buf<i32>),
    I64s(&'a E::Buf<i64>),
    U16Mut(&'a mut E::Buf<u16>),
    /// A null pointer (an optional input left out).
    Null,
    I32(i32),
    I64(i64),
    F64Val(f64),
}

/// A product operand: f32, or bf16 as raw 16-bit words.
pub enum Operand<'a, E: Engine + ?Sized> {
    F32(&'a E::Buf<f32>),
    Bf16(&'a E::Buf<u16>),
}

/// `cublasGemmStridedBatchedEx`'s arguments, column-major: for each of `batch` products,
/// `C[m, n] = alpha · op(A)[m, k] · op(B)[k, n]`, `op` transposing when `trans_*` is set; the
/// accumulation and `C` are f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gemm {
    pub trans_a: bool,
    pub trans_b: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub lda: usize,
    pub ldb: usize,
    pub ldc: usize,
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_c: usize,
    pub batch: usize,
    /// The bits of the f32 scale `alpha` (kept as bits so the struct compares exactly).
    pub alpha_bits: u32,
}

impl Gemm {
    pub fn alpha(&self) -> f32 {
        f32::from_bits(self.alpha_bits)
    }
}

/// A device the operations run on.
pub trait Engine: Send + Sync + 'static {
    /// `n` values of `T` in this device's memory.
    type Buf<T: Elem>: Send + Sync + 'static;
    /// The device the engine's buffers live on, shared by the ranks that use it.
    type Device: Send + Sync + 'static;

    fn device(&self) -> &std::sync::Arc<Self::Device>;
    /// A buffer's first `n` values on the host, with no engine at hand (waits for the device).
    fn read_back(b: &Self::Buf<f32>, n: usize) -> Result<Vec<f32>, RuntimeError>;
    /// A copy of a buffer on its own device, with no engine at hand.
    fn clone_buf(b: &Self::Buf<f32>) -> Result<Self::Buf<f32>, RuntimeError>;

    /// The matrix products' input precision.
    fn precision(&self) -> Precision;
    fn len<T: Elem>(b: &Self::Buf<T>) -> usize;
    fn alloc_zeros<T: Elem>(&self, n: usize) -> Result<Self::Buf<T>, RuntimeError>;
    fn htod<T: Elem>(&self, v: &[T]) -> Result<Self::Buf<T>, RuntimeError>;
    /// The first `n` values (waits for the device).
    fn dtoh<T: Elem>(&self, b: &Self::Buf<T>, n: usize) -> Result<Vec<T>, RuntimeError>;
    fn dtod(&self, b: &Self::Buf<f32>) -> Result<Self::Buf<f32>, RuntimeError>;
    /// `dst[range] = src[range]`.
    fn dtod_range(
        &self,
        dst: &mut Self::Buf<f32>,
        src: &Self::Buf<f32>,
        range: std::ops::Range<usize>,
    ) -> Result<(), RuntimeError>;
    /// Launches `kernels.cu`'s kernel `name`.
    fn launch(
        &self,
        name: &'static str,
        cfg: LaunchConfig,
        args: &mut [Arg<'_, Self>],
    ) -> Result<(), RuntimeError>;
    /// `c = product` as [`Gemm`] says, `a` and `b` both f32 or both bf16.
    fn gemm(
        &self,
        g: &Gemm,
        a: Operand<'_, Self>,
        b: Operand<'_, Self>,
        c: &mut Self::Buf<f32>,
    ) -> Result<(), RuntimeError>;
}

impl Engine for Gpu {
    type Buf<T: Elem> = CudaSlice<T>;
    type Device = super::device::Device;

    fn device(&self) -> &std::sync::Arc<super::device::Device> {
        &self.dev
    }

    fn read_back(b: &CudaSlice<f32>, n: usize) -> Result<Vec<f32>, RuntimeError> {
        b.stream()
            .clone_dtoh(&b.slice(0..n))
            .map_err(|e| device_err("device to host copy", e))
    }

    fn clone_buf(b: &CudaSlice<f32>) -> Result<CudaSlice<f32>, RuntimeError> {
        b.stream()
            .clone_dtod(b)
            .map_err(|e| device_err("device to device copy", e))
    }

    fn precision(&self) -> Precision {
        self.precision
    }

    fn len<T: Elem>(b: &CudaSlice<T>) -> usize {
        b.len()
    }

    fn alloc_zeros<T: Elem>(&self, n: usize) -> Result<CudaSlice<T>, RuntimeError> {
        self.stream
            .alloc_zeros::<T>(n)
            .map_err(|e| device_err("allocation", e))
    }

    fn htod<T: Elem>(&self, v: &[T]) -> Result<CudaSlice<T>, RuntimeError> {
        self.stream
            .clone_htod(v)
            .map_err(|e| device_err("host to device copy", e))
    }

    fn dtoh<T: Elem>(&self, b: &CudaSlice<T>, n: usize) -> Result<Vec<T>, RuntimeError> {
        self.stream
            .clone_dtoh(&b.slice(0..n))
            .map_err(|e| device_err("device to host copy", e))
    }

    fn dtod(&self, b: &CudaSlice<f32>) -> Result<CudaSlice<f32>, RuntimeError> {
        self.stream
            .clone_dtod(b)
            .map_err(|e| device_err("device to device copy", e))
    }

    fn dtod_range(
        &self,
        dst: &mut CudaSlice<f32>,
        src: &CudaSlice<f32>,
        range: std::ops::Range<usize>,
    ) -> Result<(), RuntimeError> {
        let from = src.slice(range.clone());
        let mut to = dst.slice_mut(range);
        self.stream
            .memcpy_dtod(&from, &mut to)
            .map_err(|e| device_err("device to device copy", e))
    }

    fn launch(
        &self,
        name: &'static str,
        cfg: LaunchConfig,
        args: &mut [Arg<'_, Self>],
    ) -> Result<(), RuntimeError> {
        let null = 0u64;
        let mut l = self.stream.launch_builder(self.kernel(name));
        for a in args.iter_mut() {
            match a {
                Arg::F32(b) => l.arg(*b),
                Arg::F32Mut(b) => l.arg(&mut **b),
                Arg::F64(b) => l.arg(*b),
                Arg::F64Mut(b) => l.arg(&mut **b),
                Arg::I32s(b) => l.arg(*b),
                Arg::I64s(b) => l.arg(*b),
                Arg::U16Mut(b) => l.arg(&mut **b),
                Arg::Null => l.arg(&null),
                Arg::I32(v) => l.arg(&*v),
                Arg::I64(v) => l.arg(&*v),
                Arg::F64Val(v) => l.arg(&*v),
            };
        }
        // SAFETY: `ops.rs` passes each kernel its C parameters in order, with buffers as long
        // as the launch shape reaches; the emulated device checks both on every test run.
        unsafe { l.launch(cfg) }.map_err(|e| device_err(&format!("kernel {name}"), e))?;
        Ok(())
    }

    fn gemm(
        &self,
        g: &Gemm,
        a: Operand<'_, Self>,
        b: Operand<'_, Self>,
        c: &mut CudaSlice<f32>,
    ) -> Result<(), RuntimeError> {
        use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
        use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cudaDataType};
        use cudarc::driver::{DevicePtr, DevicePtrMut};
        // cuBLAS runs in the thread's current context; a rank's thread may not have made it so.
        self.stream
            .context()
            .bind_to_thread()
            .map_err(|e| device_err("CUDA context", e))?;
        let s = &self.stream;
        let ((ap, _ga), (bp, _gb), ty) = match (a, b) {
            (Operand::F32(a), Operand::F32(b)) => {
                (a.device_ptr(s), b.device_ptr(s), cudaDataType::CUDA_R_32F)
            }
            (Operand::Bf16(a), Operand::Bf16(b)) => {
                (a.device_ptr(s), b.device_ptr(s), cudaDataType::CUDA_R_16BF)
            }
            _ => {
                return Err(RuntimeError::Device(
                    "a product's operands differ in precision".into(),
                ))
            }
        };
        let (cp, _gc) = c.device_ptr_mut(s);
        let op = |t: bool| if t { CUBLAS_OP_T } else { CUBLAS_OP_N };
        let dim = |n: usize| {
            i32::try_from(n)
                .map_err(|_| RuntimeError::Device(format!("a matrix dimension {n} exceeds i32")))
        };
        let (alpha, beta) = (g.alpha(), 0.0f32);
        // SAFETY: the sizes, leading dimensions and strides stay inside the operands (the
        // emulated device checks every product `ops.rs` builds); cuBLAS writes only c.
        unsafe {
            cudarc::cublas::result::gemm_strided_batched_ex(
                *self.blas.handle(),
                op(g.trans_a),
                op(g.trans_b),
                dim(g.m)?,
                dim(g.n)?,
                dim(g.k)?,
                (&alpha as *const f32).cast(),
                ap as *const _,
                ty,
                dim(g.lda)?,
                g.stride_a as i64,
                bp as *const _,
                ty,
                dim(g.ldb)?,
                g.stride_b as i64,
                (&beta as *const f32).cast(),
                cp as *mut _,
                cudaDataType::CUDA_R_32F,
                dim(g.ldc)?,
                g.stride_c as i64,
                dim(g.batch)?,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| device_err("cuBLAS", e))
    }
}

#[cfg(test)]
mod tests {
    /// The Architecture Invariant that makes the emulated device meaningful: the operations
    /// and the interpreter's GPU arithmetic reach the device only through [`super::Engine`].
    #[test]
    fn the_operations_reach_the_device_only_through_engine() {
        for (file, text) in [
            ("ops.rs", include_str!("ops.rs")),
            ("math.rs", include_str!("math.rs")),
        ] {
            for word in [
                ".stream",
                "launch_builder",
                "cublas::",
                "clone_dtoh",
                "clone_htod",
                "memcpy_",
                "device_ptr",
            ] {
                assert!(
                    !text.contains(word),
                    "cuda/{file} uses `{word}`: go through Engine, so the emulated device runs it"
                );
            }
        }
    }
}
