//! BoringSSL: the OpenSSL ABI (`SSL_write(ssl, buf, num)`, `SSL_read(ssl, buf,
//! num)`, both returning the bytes moved), so the argument handling and the copy
//! are [`crate::openssl`]'s; only the records' source differs, so that a record
//! names the library that really carried it.
//!
//! Why these hooks: Bun (and every program it compiles, Claude Code's native
//! binary among them) links BoringSSL statically and strips every symbol; user
//! space finds `SSL_write` and `SSL_read` by analysing the machine code (the
//! agent's discovery/boringssl.rs) and attaches these programs there. Libraries
//! that do export the symbols get the same programs at the symbols.
//!
//! What they fall back to: BoringSSL's `SSL_write_ex`/`SSL_read_ex` call
//! `SSL_write`/`SSL_read`, so no `_ex` probes are needed. `SSL_free` reports no
//! error and cannot be told apart in a stripped binary; `SSL_shutdown` can (it
//! alone reports APPLICATION_DATA_ON_SHUTDOWN), and clients call it when they
//! close a connection cleanly, so `boringssl_shutdown` ends the connection
//! there. A connection that ends without it (an error, the process exiting)
//! ends with its process, and user space starts a new stream when a request
//! or an HTTP/2 preface begins anew on a reused `SSL*`.
use aya_ebpf::{
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use tokentap_agent_common::{CallKind, Source, DIR_EGRESS, DIR_INGRESS};

use crate::openssl::{conn_ended, finish_call, save_args};

#[uprobe]
pub fn boringssl_write(ctx: ProbeContext) -> u32 {
    save_args(&ctx, CallKind::Write, false);
    0
}

#[uretprobe]
pub fn boringssl_write_ret(ctx: RetProbeContext) -> u32 {
    finish_call(&ctx, CallKind::Write, DIR_EGRESS, Source::BoringSsl);
    0
}

#[uprobe]
pub fn boringssl_read(ctx: ProbeContext) -> u32 {
    save_args(&ctx, CallKind::Read, false);
    0
}

#[uretprobe]
pub fn boringssl_read_ret(ctx: RetProbeContext) -> u32 {
    finish_call(&ctx, CallKind::Read, DIR_INGRESS, Source::BoringSsl);
    0
}

/// `SSL_shutdown(ssl)`: the connection is closing.
#[uprobe]
pub fn boringssl_shutdown(ctx: ProbeContext) -> u32 {
    conn_ended(&ctx);
    0
}
