//! An emulated device for the tests, so `ops.rs` runs on every machine: `kernels.cu` compiled
//! for the CPU by the system's C++ compiler (`emulated.cpp`: a block's threads are fibers that
//! meet at `__syncthreads`), and cuBLAS's strided batched product by its definition. It also
//! checks what a GPU would let pass silently: each launch's arguments against the kernel's C
//! parameters (count, size, float or integer, pointer, const), each product's dimensions
//! against cuBLAS's rules and its operands' extents, and guard values around every buffer
//! after each launch. Without a C++ compiler its tests skip, saying so.

use std::ffi::{c_char, c_int, c_uint, c_void, CString};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use cudarc::driver::LaunchConfig;
use libloading::Library;

use super::engine::{Arg, Elem, Engine, Gemm, Operand};
use super::ops::Precision;
use crate::RuntimeError;

/// Values of a guard on each side of every buffer.
const GUARD: usize = 64;

/// What a guard value holds, by the value's size: a signalling NaN, so a read past the end
/// poisons what it reaches, and arithmetic that writes it back quietens it (changes its bits).
fn guard_bits(size: usize) -> Vec<u8> {
    match size {
        2 => 0xff81u16.to_le_bytes().to_vec(),
        4 => 0xff80_0001u32.to_le_bytes().to_vec(),
        8 => 0xfff0_0000_0000_0001u64.to_le_bytes().to_vec(),
        n => vec![0xa5; n],
    }
}

const FLOAT: c_int = 16;
const CONST: c_int = 32;
const POINTER: c_int = 64;

/// `n` values with a guard on each side.
pub struct EmuBuf<T> {
    data: Vec<T>,
    len: usize,
}

impl<T: Elem> EmuBuf<T> {
    fn new(values: &[T]) -> EmuBuf<T> {
        let mut data = vec![T::default(); values.len() + 2 * GUARD];
        data[GUARD..GUARD + values.len()].copy_from_slice(values);
        let mut b = EmuBuf {
            data,
            len: values.len(),
        };
        let g = guard_bits(std::mem::size_of::<T>());
        for i in (0..GUARD).chain(GUARD + b.len..b.data.len()) {
            // SAFETY: every `Elem` is plain data, valid for any bits, of `g.len()` bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    g.as_ptr(),
                    (&mut b.data[i] as *mut T).cast(),
                    g.len(),
                )
            };
        }
        b
    }

    fn values(&self) -> &[T] {
        &self.data[GUARD..GUARD + self.len]
    }

    fn values_mut(&mut self) -> &mut [T] {
        &mut self.data[GUARD..GUARD + self.len]
    }

    /// The first `n` values, on the host.
    fn first(&self, n: usize) -> Result<Vec<T>, RuntimeError> {
        if n > self.len {
            return Err(emu_err(format!(
                "{n} values read from a buffer of {}",
                self.len
            )));
        }
        Ok(self.values()[..n].to_vec())
    }

    fn ptr(&self) -> u64 {
        self.values().as_ptr() as u64
    }

    fn guards_intact(&self) -> bool {
        let g = guard_bits(std::mem::size_of::<T>());
        let bytes = |s: &[T]| {
            // SAFETY: plain data viewed as its bytes.
            unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), std::mem::size_of_val(s)) }
                .chunks(g.len())
                .all(|c| c == g.as_slice())
        };
        bytes(&self.data[..GUARD]) && bytes(&self.data[GUARD + self.len..])
    }
}

type SignatureFn = unsafe extern "C" fn(*const c_char, *mut c_int, c_int) -> c_int;
type LaunchFn = unsafe extern "C" fn(
    *const c_char,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    *mut *mut c_void,
) -> c_int;

/// The emulated device: the compiled kernels, shared by the ranks that use it.
pub struct EmuDevice {
    /// `emulated.cpp`'s entry points, looked up once; valid while `_lib` is loaded.
    signature: SignatureFn,
    launch: LaunchFn,
    _lib: Library,
}

/// One rank's view of the emulated device: its product precision.
pub struct Emu {
    dev: Arc<EmuDevice>,
    precision: Precision,
}

/// Why the emulated device cannot be had here (no C++ compiler), or the library's path.
enum Built {
    At(PathBuf),
    NoCompiler(String),
}

/// Compiles `emulated.cpp` (with `kernels.cu`) into a shared library named by a hash of the
/// sources and the compiler, unless it is already there.
fn build() -> Built {
    use std::hash::{Hash, Hasher};
    const HARNESS: &str = include_str!("emulated.cpp");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (HARNESS, super::device::SOURCE, cxx.as_str()).hash(&mut h);
    let dir = std::env::temp_dir().join(format!("hetpar-kernels-emulated-{:016x}", h.finish()));
    let out = dir.join("kernels.so");
    if out.exists() {
        return Built::At(out);
    }
    // Tests build it from several threads and processes at once: each writes and compiles in
    // a folder of its own and renames the result into place (atomic; the last one wins, all
    // alike).
    let thread = format!("{:?}", std::thread::current().id());
    let me: String = thread.chars().filter(char::is_ascii_digit).collect();
    let work = dir.join(format!("build-{}-{me}", std::process::id()));
    let write = |name: &str, text: &str| {
        std::fs::create_dir_all(&work)
            .and_then(|()| std::fs::write(work.join(name), text))
            .unwrap_or_else(|e| panic!("writing {}: {e}", work.join(name).display()))
    };
    write("kernels.cu", super::device::SOURCE);
    write("emulated.cpp", HARNESS);
    let tmp = work.join("kernels.so");
    let run = Command::new(&cxx)
        .args(["-std=c++20", "-O2", "-ffp-contract=off", "-shared", "-fPIC"])
        .arg("-o")
        .arg(&tmp)
        .arg(work.join("emulated.cpp"))
        .output();
    let built = match run {
        Err(e) => Built::NoCompiler(format!("the C++ compiler `{cxx}` could not be run: {e}")),
        Ok(o) if !o.status.success() => panic!(
            "{cxx} could not compile the kernels for the CPU:\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Ok(_) => {
            std::fs::rename(&tmp, &out).expect("rename the emulated kernels into place");
            Built::At(out)
        }
    };
    let _ = std::fs::remove_dir_all(&work);
    built
}

impl EmuDevice {
    /// The emulated device, or why it cannot be had here (no C++ compiler).
    pub fn open() -> Result<Arc<EmuDevice>, String> {
        let path = match build() {
            Built::At(p) => p,
            Built::NoCompiler(why) => return Err(why),
        };
        // SAFETY: the library is ours, built above; loading runs no initialisers with effects,
        // and the two symbols have these C signatures. The pointers are kept beside the library,
        // which stays loaded as long as they do.
        let (signature, launch, lib) = unsafe {
            let lib =
                Library::new(&path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
            let signature = *lib
                .get::<SignatureFn>(b"emu_signature")
                .expect("emu_signature");
            let launch = *lib.get::<LaunchFn>(b"emu_launch").expect("emu_launch");
            (signature, launch, lib)
        };
        Ok(Arc::new(EmuDevice {
            signature,
            launch,
            _lib: lib,
        }))
    }

    /// A rank on this device, its products' inputs in `precision`.
    pub fn rank(self: &Arc<EmuDevice>, precision: Precision) -> Emu {
        Emu {
            dev: self.clone(),
            precision,
        }
    }
}

impl Emu {
    /// A rank on a device of its own.
    pub fn open(precision: Precision) -> Result<Emu, String> {
        Ok(EmuDevice::open()?.rank(precision))
    }

    /// Kernel `name`'s parameters as `emulated.cpp` describes them.
    fn signature(&self, name: &str) -> Option<Vec<c_int>> {
        let c = CString::new(name).expect("no NUL");
        let mut out = [0 as c_int; 32];
        // SAFETY: `out` holds the 32 the call is told of.
        let n = unsafe { (self.dev.signature)(c.as_ptr(), out.as_mut_ptr(), out.len() as c_int) };
        (n >= 0).then(|| out[..n as usize].to_vec())
    }
}

fn emu_err(msg: String) -> RuntimeError {
    RuntimeError::Device(format!("emulated device: {msg}"))
}

/// What an argument is, in `emulated.cpp`'s terms, and the address of its value.
fn describe(a: &Arg<'_, Emu>) -> (c_int, u64) {
    let p = |b: u64, size: usize, float: bool, konst: bool| {
        let flags = POINTER | if float { FLOAT } else { 0 } | if konst { CONST } else { 0 };
        (flags | size as c_int, b)
    };
    match a {
        Arg::F32(b) => p(b.ptr(), 4, true, true),
        Arg::F32Mut(b) => p(b.ptr(), 4, true, false),
        Arg::F64(b) => p(b.ptr(), 8, true, true),
        Arg::F64Mut(b) => p(b.ptr(), 8, true, false),
        Arg::I32s(b) => p(b.ptr(), 4, false, true),
        Arg::I64s(b) => p(b.ptr(), 8, false, true),
        Arg::U16Mut(b) => p(b.ptr(), 2, false, false),
        Arg::Null => (POINTER, 0),
        Arg::I32(v) => (4, *v as u32 as u64),
        Arg::I64(v) => (8, *v as u64),
        Arg::F64Val(v) => (FLOAT | 8, v.to_bits()),
    }
}

fn guards_intact(a: &Arg<'_, Emu>) -> bool {
    match a {
        Arg::F32(b) => b.guards_intact(),
        Arg::F32Mut(b) => b.guards_intact(),
        Arg::F64(b) => b.guards_intact(),
        Arg::F64Mut(b) => b.guards_intact(),
        Arg::I32s(b) => b.guards_intact(),
        Arg::I64s(b) => b.guards_intact(),
        Arg::U16Mut(b) => b.guards_intact(),
        Arg::Null | Arg::I32(_) | Arg::I64(_) | Arg::F64Val(_) => true,
    }
}

/// Whether argument `a` (described as `got`) may be passed for parameter `want`: the same
/// size and kind, and a pointer to const exactly when the buffer is only read (a null pointer
/// fits any pointer to const).
fn fits(a: &Arg<'_, Emu>, got: c_int, want: c_int) -> bool {
    match a {
        Arg::Null => want & POINTER != 0 && want & CONST != 0,
        _ => got == want,
    }
}

impl Engine for Emu {
    type Buf<T: Elem> = EmuBuf<T>;
    type Device = EmuDevice;

    fn device(&self) -> &Arc<EmuDevice> {
        &self.dev
    }

    fn read_back(b: &EmuBuf<f32>, n: usize) -> Result<Vec<f32>, RuntimeError> {
        b.first(n)
    }

    fn clone_buf(b: &EmuBuf<f32>) -> Result<EmuBuf<f32>, RuntimeError> {
        Ok(EmuBuf::new(b.values()))
    }

    fn precision(&self) -> Precision {
        self.precision
    }

    fn len<T: Elem>(b: &EmuBuf<T>) -> usize {
        b.len
    }

    fn alloc_zeros<T: Elem>(&self, n: usize) -> Result<EmuBuf<T>, RuntimeError> {
        Ok(EmuBuf::new(&vec![T::default(); n]))
    }

    fn htod<T: Elem>(&self, v: &[T]) -> Result<EmuBuf<T>, RuntimeError> {
        Ok(EmuBuf::new(v))
    }

    fn dtoh<T: Elem>(&self, b: &EmuBuf<T>, n: usize) -> Result<Vec<T>, RuntimeError> {
        b.first(n)
    }

    fn dtod(&self, b: &EmuBuf<f32>) -> Result<EmuBuf<f32>, RuntimeError> {
        Self::clone_buf(b)
    }

    fn dtod_range(
        &self,
        dst: &mut EmuBuf<f32>,
        src: &EmuBuf<f32>,
        range: std::ops::Range<usize>,
    ) -> Result<(), RuntimeError> {
        if range.end > dst.len || range.end > src.len {
            return Err(emu_err(format!(
                "copy of {range:?} between buffers of {} and {}",
                src.len, dst.len
            )));
        }
        dst.values_mut()[range.clone()].copy_from_slice(&src.values()[range]);
        Ok(())
    }

    fn launch(
        &self,
        name: &'static str,
        cfg: LaunchConfig,
        args: &mut [Arg<'_, Self>],
    ) -> Result<(), RuntimeError> {
        let params = self
            .signature(name)
            .ok_or_else(|| emu_err(format!("no kernel {name}")))?;
        if params.len() != args.len() {
            return Err(emu_err(format!(
                "kernel {name} takes {} parameters, given {}",
                params.len(),
                args.len()
            )));
        }
        let mut values: Vec<u64> = Vec::with_capacity(args.len());
        for (i, (a, &want)) in args.iter().zip(&params).enumerate() {
            let (got, v) = describe(a);
            if !fits(a, got, want) {
                return Err(emu_err(format!(
                    "kernel {name}, parameter {i}: given {got:#x}, the kernel takes {want:#x} \
                     (size | 0x10 float | 0x20 const | 0x40 pointer)"
                )));
            }
            values.push(v);
        }
        // Each parameter's value at its own address, as cuLaunchKernel takes them (the first
        // bytes of a u64 are its low bytes here, so an i32 reads as itself).
        let mut ptrs: Vec<*mut c_void> = values
            .iter_mut()
            .map(|v| (v as *mut u64).cast::<c_void>())
            .collect();
        let c = CString::new(name).expect("no NUL");
        let (g, b) = (cfg.grid_dim, cfg.block_dim);
        if b.0 * b.1 * b.2 > 1024 {
            return Err(emu_err(format!("kernel {name}: {b:?} threads per block")));
        }
        // SAFETY: the arguments were checked against the kernel's parameters above; the
        // buffers outlive the call (borrowed by `args`).
        let rc = unsafe {
            (self.dev.launch)(c.as_ptr(), g.0, g.1, g.2, b.0, b.1, b.2, ptrs.as_mut_ptr())
        };
        if rc != 0 {
            return Err(emu_err(format!("kernel {name} did not run ({rc})")));
        }
        for (i, a) in args.iter().enumerate() {
            if !guards_intact(a) {
                return Err(emu_err(format!(
                    "kernel {name} wrote outside the buffer of parameter {i}"
                )));
            }
        }
        Ok(())
    }

    fn gemm(
        &self,
        g: &Gemm,
        a: Operand<'_, Self>,
        b: Operand<'_, Self>,
        c: &mut EmuBuf<f32>,
    ) -> Result<(), RuntimeError> {
        let (a, b): (Vec<f32>, Vec<f32>) = match (a, b) {
            (Operand::F32(a), Operand::F32(b)) => (a.values().to_vec(), b.values().to_vec()),
            (Operand::Bf16(a), Operand::Bf16(b)) => {
                let wide = |v: &[u16]| -> Vec<f32> {
                    v.iter()
                        .map(|&h| f32::from_bits(u32::from(h) << 16))
                        .collect()
                };
                (wide(a.values()), wide(b.values()))
            }
            _ => return Err(emu_err("a product's operands differ in precision".into())),
        };
        // cuBLAS's rules for the leading dimensions (CUBLAS_STATUS_INVALID_VALUE otherwise).
        let (ra, ca) = if g.trans_a { (g.k, g.m) } else { (g.m, g.k) };
        let (rb, cb) = if g.trans_b { (g.n, g.k) } else { (g.k, g.n) };
        for (what, ld, rows) in [("lda", g.lda, ra), ("ldb", g.ldb, rb), ("ldc", g.ldc, g.m)] {
            if ld < rows.max(1) {
                return Err(emu_err(format!("{what} {ld} below {rows} rows: {g:?}")));
            }
        }
        // Each operand's last value read or written must lie inside it.
        let last = |stride: usize, ld: usize, rows: usize, cols: usize| {
            (g.batch.max(1) - 1) * stride + (cols.max(1) - 1) * ld + rows.max(1) - 1
        };
        for (what, end, len) in [
            ("A", last(g.stride_a, g.lda, ra, ca), a.len()),
            ("B", last(g.stride_b, g.ldb, rb, cb), b.len()),
            ("C", last(g.stride_c, g.ldc, g.m, g.n), c.len),
        ] {
            // With k = 0 cuBLAS reads neither A nor B (C = beta·C).
            let read = what == "C" || g.k > 0;
            if g.m * g.n * g.batch > 0 && read && end >= len {
                return Err(emu_err(format!(
                    "product reads {what} up to {end}, past its {len} values: {g:?}"
                )));
            }
        }
        let at = |t: bool, ld: usize, i: usize, j: usize| if t { j + i * ld } else { i + j * ld };
        let out = c.values_mut();
        for h in 0..g.batch {
            let (oa, ob, oc) = (h * g.stride_a, h * g.stride_b, h * g.stride_c);
            for j in 0..g.n {
                for i in 0..g.m {
                    let mut acc = 0.0f32;
                    for l in 0..g.k {
                        acc +=
                            a[oa + at(g.trans_a, g.lda, i, l)] * b[ob + at(g.trans_b, g.ldb, l, j)];
                    }
                    out[oc + i + j * g.ldc] = g.alpha() * acc;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::check::compare_ops;
    use crate::cuda::ops::Ops;
    use crate::reference::rng::SplitMix64;
    use crate::tensor::Tensor;

    fn emu(p: Precision) -> Option<Emu> {
        match Emu::open(p) {
            Ok(e) => Some(e),
            Err(why) => {
                eprintln!("skipped: {why}");
                None
            }
        }
    }

    #[test]
    fn the_device_checks_comparisons_pass_on_the_emulated_device() {
        let (Some(f32), Some(bf16)) = (emu(Precision::F32), emu(Precision::Bf16)) else {
            return;
        };
        let ops = compare_ops(&f32, &bf16, &mut SplitMix64::new(7));
        for c in &ops {
            eprintln!("{:<40} {:>10.2e} {:>8.1e}", c.op, c.error, c.tolerance);
        }
        assert!(ops.len() >= 30, "every operation compared: {ops:#?}");
        let failed: Vec<_> = ops.iter().filter(|c| !c.passed()).collect();
        assert!(failed.is_empty(), "{failed:#?}");
    }

    #[test]
    fn every_listed_kernel_is_emulated() {
        let Some(e) = emu(Precision::F32) else { return };
        for k in crate::cuda::device::KERNELS {
            assert!(
                e.signature(k).is_some(),
                "{k} is missing from emulated.cpp's table"
            );
        }
    }

    #[test]
    fn a_launch_whose_arguments_differ_from_the_kernels_parameters_is_refused() {
        let Some(e) = emu(Precision::F32) else { return };
        let x = e
            .upload(&Tensor::from_vec(&[3], vec![1.0, 2.0, 3.0]).unwrap())
            .unwrap();
        let mut y = e.zeros(&[3]).unwrap();
        let cfg = super::super::ops::elems(3);
        // The count is an i64 (`long long n`), not an i32.
        let err = e
            .launch(
                "add_into",
                cfg,
                &mut [Arg::F32Mut(&mut y.buf), Arg::F32(&x.buf), Arg::I32(3)],
            )
            .unwrap_err();
        assert!(err.to_string().contains("parameter 2"), "{err}");
        // The kernel writes its first operand: passing it as read-only is refused.
        let y2 = e.zeros(&[3]).unwrap();
        let err = e
            .launch(
                "add_into",
                cfg,
                &mut [Arg::F32(&y2.buf), Arg::F32(&x.buf), Arg::I64(3)],
            )
            .unwrap_err();
        assert!(err.to_string().contains("parameter 0"), "{err}");
        // One parameter short.
        let err = e
            .launch(
                "add_into",
                cfg,
                &mut [Arg::F32Mut(&mut y.buf), Arg::F32(&x.buf)],
            )
            .unwrap_err();
        assert!(err.to_string().contains("takes 3 parameters"), "{err}");
        // Matching arguments run: y = 0 + x.
        e.launch(
            "add_into",
            cfg,
            &mut [Arg::F32Mut(&mut y.buf), Arg::F32(&x.buf), Arg::I64(3)],
        )
        .unwrap();
        assert_eq!(e.download(&y).unwrap().data(), &[1.0, 2.0, 3.0]);
    }

    #[test]
    fn a_kernel_writing_past_its_buffer_is_caught() {
        let Some(e) = emu(Precision::F32) else { return };
        let x = e
            .upload(&Tensor::from_vec(&[8], vec![1.0; 8]).unwrap())
            .unwrap();
        let mut y = e.zeros(&[5]).unwrap();
        // Told there are 8 values, the kernel writes 3 past y's 5.
        let err = e
            .launch(
                "add_into",
                super::super::ops::elems(8),
                &mut [Arg::F32Mut(&mut y.buf), Arg::F32(&x.buf), Arg::I64(8)],
            )
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("wrote outside the buffer of parameter 0"),
            "{err}"
        );
    }

    #[test]
    fn a_product_past_its_operands_is_refused() {
        let Some(e) = emu(Precision::F32) else { return };
        let (x, w) = (e.zeros(&[4, 3]).unwrap(), e.zeros(&[2, 3]).unwrap());
        let mut y = e.zeros(&[4, 2]).unwrap();
        let good = super::super::ops::Prod::dense(super::super::ops::Form::XWt, 4, 2, 3).gemm();
        e.gemm(
            &good,
            Operand::F32(&w.buf),
            Operand::F32(&x.buf),
            &mut y.buf,
        )
        .unwrap();
        // A leading dimension below the rows it spans.
        let bad = Gemm { lda: 2, ..good };
        let err = e
            .gemm(&bad, Operand::F32(&w.buf), Operand::F32(&x.buf), &mut y.buf)
            .unwrap_err();
        assert!(err.to_string().contains("lda 2 below 3"), "{err}");
        // A second batch past the operands.
        let bad = Gemm {
            batch: 2,
            stride_b: 12,
            ..good
        };
        let err = e
            .gemm(&bad, Operand::F32(&w.buf), Operand::F32(&x.buf), &mut y.buf)
            .unwrap_err();
        assert!(err.to_string().contains("past its"), "{err}");
    }

    #[test]
    fn the_emulated_product_is_cublas_column_major_definition() {
        // C = A·B column-major with A 2x3 = [[1,2,3],[4,5,6]] stored by columns.
        let Some(e) = emu(Precision::F32) else { return };
        let a = e.htod(&[1.0f32, 4.0, 2.0, 5.0, 3.0, 6.0]).unwrap();
        let b = e.htod(&[1.0f32, 0.0, 2.0, 0.0, 1.0, 0.0]).unwrap(); // 3x2, columns (1,0,2), (0,1,0)
        let mut c = e.alloc_zeros::<f32>(4).unwrap();
        let g = Gemm {
            trans_a: false,
            trans_b: false,
            m: 2,
            n: 2,
            k: 3,
            lda: 2,
            ldb: 3,
            ldc: 2,
            stride_a: 0,
            stride_b: 0,
            stride_c: 0,
            batch: 1,
            alpha_bits: 1.0f32.to_bits(),
        };
        e.gemm(&g, Operand::F32(&a), Operand::F32(&b), &mut c)
            .unwrap();
        // Column 0: A·(1,0,2) = (7, 16); column 1: A·(0,1,0) = (2, 5).
        assert_eq!(e.dtoh(&c, 4).unwrap(), vec![7.0, 16.0, 2.0, 5.0]);
    }
}
