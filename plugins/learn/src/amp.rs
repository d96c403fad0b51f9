//! bfloat16 autocast on CUDA.
//!
//! tch's `autocast` turns libtorch's CUDA autocast on but leaves its dtype at float16, which
//! needs loss scaling; bfloat16 has float32's range and needs none. It also goes through
//! libtorch's deprecated device-less switches, which print a warning at every call (tens of
//! thousands of lines in a training log). libtorch exports the per-device functions only as
//! C++ symbols, so they are declared here by their mangled names. The build script pins
//! libtorch to 2.11.0, whose ABI this matches, and tests read the values back.

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
    #[link_name = "_ZN2at8autocast19is_autocast_enabledEN3c1010DeviceTypeE"]
    fn is_autocast_enabled(device: i8) -> bool;
    #[link_name = "_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb"]
    fn set_autocast_enabled(device: i8, enabled: bool);
    #[link_name = "_ZN2at8autocast17increment_nestingEv"]
    fn increment_nesting() -> i32;
    #[link_name = "_ZN2at8autocast17decrement_nestingEv"]
    fn decrement_nesting() -> i32;
    #[link_name = "_ZN2at8autocast11clear_cacheEv"]
    fn clear_cache();
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

/// Whether CUDA autocast is on (for this thread).
pub fn cuda_autocast_enabled() -> bool {
    // SAFETY: reads a thread-local flag (libtorch 2.11.0).
    unsafe { is_autocast_enabled(CUDA) }
}

/// Runs `f` under bfloat16 autocast when `enabled` and CUDA is present, else plainly (no
/// autocast call at all). Restores the previous state afterwards and, at the outermost
/// level, frees the cast weights autocast cached, as `torch.autocast` does on exit.
pub fn autocast_bf16<T>(enabled: bool, f: impl FnOnce() -> T) -> T {
    if !(enabled && tch::Cuda::is_available()) {
        return f();
    }
    use_bf16_on_cuda();
    // SAFETY: thread-local state setters and a cache clear, with plain arguments.
    let prev = unsafe {
        let prev = is_autocast_enabled(CUDA);
        set_autocast_enabled(CUDA, true);
        increment_nesting();
        prev
    };
    let out = f();
    // SAFETY: as above.
    unsafe {
        if decrement_nesting() == 0 {
            clear_cache();
        }
        set_autocast_enabled(CUDA, prev);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_dtype_setter_is_the_one_libtorch_reads() {
        super::use_bf16_on_cuda();
        assert!(super::cuda_autocast_is_bf16());
    }

    /// The enable switch is libtorch's own (the flag round-trips), and a disabled or
    /// CUDA-less call leaves autocast off.
    #[test]
    fn the_enable_switch_round_trips() {
        assert!(!super::cuda_autocast_enabled());
        unsafe { super::set_autocast_enabled(super::CUDA, true) };
        assert!(super::cuda_autocast_enabled());
        unsafe { super::set_autocast_enabled(super::CUDA, false) };
        let inside = super::autocast_bf16(false, super::cuda_autocast_enabled);
        assert!(!inside);
        let inside = super::autocast_bf16(true, super::cuda_autocast_enabled);
        assert_eq!(inside, tch::Cuda::is_available());
        assert!(!super::cuda_autocast_enabled());
    }
}
