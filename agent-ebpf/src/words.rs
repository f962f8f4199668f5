//! Stores and copies the compiler must leave as they are written.
//!
//! Why: the BPF target lowers `memset` and `memmove` to calls of the byte-at-a-
//! time versions in `compiler_builtins` rather than inline stores, and LLVM
//! makes them out of ordinary code: adjacent zero stores are merged into a
//! memset, a struct copied between two map values becomes a memmove. On the
//! HTTP/2 path that was ~1,500 instructions a read (two 64-byte walk copies,
//! zeroed fields, a 16-byte header buffer), about a fifth of the programs' time
//! in curl's profile. Volatile word accesses are never merged nor turned back
//! into a call.

/// `*p = 0`, not merged with its neighbours into a memset.
#[inline(always)]
pub(crate) fn zero<T: Default>(p: &mut T) {
    // SAFETY: a valid, aligned place (a reference).
    unsafe { core::ptr::write_volatile(p, T::default()) };
}

/// `*dst = *src` for a plain struct of `u64` words, word by word.
///
/// # Safety
/// Both point to valid, 8-aligned `T`s whose size is a multiple of 8.
#[inline(always)]
pub(crate) unsafe fn copy<T: Copy>(dst: *mut T, src: *const T) {
    const { assert!(core::mem::size_of::<T>().is_multiple_of(8) && core::mem::align_of::<T>() >= 8) };
    let (d, s) = (dst.cast::<u64>(), src.cast::<u64>());
    let mut i = 0;
    while i < core::mem::size_of::<T>() / 8 {
        // SAFETY: inside both values (the caller's promise).
        unsafe { core::ptr::write_volatile(d.add(i), core::ptr::read_volatile(s.add(i))) };
        i += 1;
    }
}

/// Zero a plain struct of `u64` words in place, word by word (a value
/// returned instead is copied, and a copy of zeroes becomes a memset).
///
/// # Safety
/// `dst` is valid for writes of an 8-aligned `T` whose size is a multiple of 8.
#[inline(always)]
pub(crate) unsafe fn zero_words<T>(dst: *mut T) {
    const { assert!(core::mem::size_of::<T>().is_multiple_of(8) && core::mem::align_of::<T>() >= 8) };
    let p = dst.cast::<u64>();
    let mut i = 0;
    while i < core::mem::size_of::<T>() / 8 {
        // SAFETY: inside `*dst` (the caller's promise).
        unsafe { core::ptr::write_volatile(p.add(i), 0) };
        i += 1;
    }
}

/// Zero `n` bytes at `p`, one at a time but inline.
///
/// # Safety
/// `p..p + n` is valid for writes.
#[inline(always)]
pub(crate) unsafe fn zero_bytes(p: *mut u8, n: usize) {
    let mut i = 0;
    while i < n {
        // SAFETY: inside the range (the caller's promise).
        unsafe { core::ptr::write_volatile(p.add(i), 0) };
        i += 1;
    }
}
