//! Kernel side of tokentap: copy plaintext out of TLS library calls and plaintext
//! sockets, nothing more. All parsing is in user space.
//!
//! One module per hook family, each opening with why its hooks were chosen and
//! what it falls back to:
//! - [`openssl`]: `SSL_write`/`SSL_read` (and `_ex`), `SSL_free`, `SSL_set_fd`;
//! - [`boringssl`]: the same ABI in BoringSSL, found by analysis in stripped
//!   binaries (Bun, Claude Code);
//! - [`rustls`]: rustls's `CommonState` send and receive functions;
//! - [`go_tls`]: Go's `crypto/tls.(*Conn).Write`/`.Read`/`.Close`;
//! - [`java`]: JSSE's plaintext, handed by tokentap's Java agent to a native
//!   function of its own;
//! - [`sockets`]: client sockets at the syscalls: plaintext HTTP copied, TLS
//!   connections named (their hello, through [`hello`]) and counted;
//! - [`watched`]: which processes and fds the socket hooks watch, the filter
//!   every read, write and close of the host passes first;
//! - [`slots`]: counts by slot, an array read before a hash map;
//! - [`syscall_args`]: a syscall's number and arguments, as either kind of
//!   syscall hook sees them;
//! - [`hello`]: the first write of a TLS client connection to user space;
//! - [`process`]: exec, exit and library loads, which drive user space's discovery;
//! - [`handover`]: which of two overlapping agents (an upgrade) copies each
//!   connection, and when one hands it to the next;
//! - [`h2_walk`]: the frame headers of HTTP/2 responses, so the DATA frames
//!   user space does not record are not copied;
//! - [`call_args`]: a TLS call's arguments from its entry to its return, in
//!   the thread's storage;
//! - [`chunks`]: the copy path all capture methods share (connection filter,
//!   per-CPU scratch, ordered chunks into the ring buffer);
//! - [`ring`]: the ring buffer itself, its wake-up policy, control events and the
//!   loss counters;
//! - [`words`]: stores and copies kept from becoming byte-at-a-time calls.
//!
//! Program and map names are what user space loads them by (`agent/src/probes.rs`):
//! they are the function and static names, whatever module they live in.
#![no_std]
// `atomic_xadd`: core offers no atomics for the BPF target (it has no CAS); the add it has.
#![feature(core_intrinsics)]
#![allow(internal_features)]
#![no_main]

mod adopted;
mod boringssl;
mod call_args;
mod chunks;
mod go_tls;
mod h2_walk;
mod handover;
mod hello;
mod java;
mod openssl;
mod process;
mod ring;
mod rustls;
mod slots;
mod sockets;
mod syscall_args;
mod watched;
mod words;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
