//! bfloat16 autocast on CUDA.
//!
//! tch's `autocast` turns libtorch's CUDA autocast on but leaves its dtype at float16, which
//! needs loss scaling; bfloat16 has float32's range and needs none. libtorch exports the
//! setter (`at::autocast::set_autocast_dtype`) only as a C++ symbol, so it is declared here by
//! its mangled name. The build script pins libtorch to 2.11.0, whose ABI this matches, and a
//! test reads the value back.

/// `c10::DeviceType::CUDA`.
const CUDA: i8 = 1;
/// `c10::ScalarType::BFloat16`.
const BFLOAT16: i8 = 15;

#[link(name = "torch_cpu")]
extern "C" {
    #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
    fn set_autocast_dtype(device: i8, dtype: i8);
    #[link_name = "_ZN2at8autocast18get_autocast_dtypeEN3c1010DeviceTypeE"]
    fn get_autocast_dtype(device: i8) -> i8;
}

/// Makes CUDA autocast compute in bfloat16 (for this thread's autocast state).
pub fn use_bf16_on_cuda() {
    // SAFETY: plain enum arguments; the function only stores them (libtorch 2.11.0).
    unsafe { set_autocast_dtype(CUDA, BFLOAT16) }
}

/// Whether CUDA autocast is set to bfloat16.
pub fn cuda_autocast_is_bf16() -> bool {
    // SAFETY: as above; the getter only reads.
    unsafe { get_autocast_dtype(CUDA) == BFLOAT16 }
}

/// Runs `f` under bfloat16 autocast when `enabled` and CUDA is present, else plainly.
pub fn autocast_bf16<T>(enabled: bool, f: impl FnOnce() -> T) -> T {
    if enabled && tch::Cuda::is_available() {
        use_bf16_on_cuda();
        tch::autocast(true, f)
    } else {
        f()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_dtype_setter_is_the_one_libtorch_reads() {
        super::use_bf16_on_cuda();
        assert!(super::cuda_autocast_is_bf16());
    }
}
