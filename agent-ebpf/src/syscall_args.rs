//! A syscall's number and arguments, as each kind of hook the socket
//! programs run behind sees them ([`crate::sockets`]): the raw `sys_enter`
//! tracepoint (the default) and the syscalls' own `syscalls/sys_enter_*`.
//!
//! Why lazily, one by one: most calls stop at a filter before their
//! arguments, so a hook reads only what its next test needs.
use aya_ebpf::{
    bindings::pt_regs,
    helpers::bpf_probe_read_kernel,
    programs::{RawTracePointContext, TracePointContext},
    EbpfContext,
};

/// A syscall's number and first three arguments, as the hook that ran sees
/// them. Read lazily: most calls stop at a filter before their arguments.
pub(crate) trait Syscall {
    fn nr(&self) -> u64;
    fn arg(&self, n: u32) -> u64;
}

/// Raw `sys_enter`: the number is an argument, the syscall's arguments are in
/// its `pt_regs` (rdi, rsi, rdx), read one by one: the whole struct would cost
/// a 168-byte copy per call.
impl Syscall for RawTracePointContext {
    #[inline(always)]
    fn nr(&self) -> u64 {
        self.arg(1)
    }

    #[inline(always)]
    fn arg(&self, n: u32) -> u64 {
        let p: *const pt_regs = RawTracePointContext::arg(self, 0);
        // SAFETY: only the field's address is computed; the kernel read checks it.
        let field = unsafe {
            match n {
                0 => core::ptr::addr_of!((*p).rdi),
                1 => core::ptr::addr_of!((*p).rsi),
                _ => core::ptr::addr_of!((*p).rdx),
            }
        };
        unsafe { bpf_probe_read_kernel(field) }.unwrap_or(0)
    }
}

/// `syscalls/sys_enter_*`: the record of the events' format files, `int
/// __syscall_nr` at 8 and each argument as 8 bytes from 16 (the same layout
/// for every syscall), read straight from the context (constant offsets).
impl Syscall for TracePointContext {
    #[inline(always)]
    fn nr(&self) -> u64 {
        // SAFETY: a field of the tracepoint's record; the verifier checks the offset.
        unsafe { *(self.as_ptr() as *const u8).add(8).cast::<i32>() as u32 as u64 }
    }

    #[inline(always)]
    fn arg(&self, n: u32) -> u64 {
        let off = match n {
            0 => 16,
            1 => 24,
            _ => 32,
        };
        // SAFETY: as above.
        unsafe { *(self.as_ptr() as *const u8).add(off).cast::<u64>() }
    }
}
