//! Java (JSSE), through tokentap's Java agent.
//!
//! Why these hooks: JSSE does TLS in Java, so there is no native TLS library
//! to probe. tokentap attaches a Java agent to each HotSpot JVM (the agent's
//! java/ module); the agent patches JSSE's plaintext methods
//! (`SSLSocketImpl`'s application streams, `SSLEngineImpl.wrap/unwrap`) to hand
//! each plaintext buffer to `tokentap_java_data(conn, direction, buf, len)` in
//! its native library, a function that does nothing but return. The uprobe on
//! its first instruction sees the four arguments and copies exactly `len`
//! bytes at `buf` through the shared chunk path, as the OpenSSL return probe
//! does: the bytes are final when the Java side calls (after the read, after
//! the write). `tokentap_java_close(conn)` marks a connection's end (a socket's
//! `close`, an engine's `closeOutbound`, or the connection object collected).
//! No kprobe, no ioctl: uprobes on a function of our own library work on every
//! kernel tokentap supports.
//!
//! `conn` is the Java agent's id for the SSLSocketImpl/SSLEngineImpl object:
//! `JAVA_CONN` plus a counter, never reused in a JVM, never a pointer.
//!
//! What it falls back to: a call whose arguments make no sense (a direction
//! other than 0/1, a length beyond `MAX_CALL`) is not copied; the chunk path's
//! limits and loss counters apply as for every method. A JVM the agent could
//! not attach to is listed in coverage by user space; nothing here sees it.
use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::uprobe, programs::ProbeContext};
use tokentap_agent_common::{EventKind, Source, SslKey, DIR_EGRESS, DIR_INGRESS, JAVA_CONN};

use crate::chunks::{emit_data, forget_conn, ignored, Emit};
use crate::ring::emit_control;

/// More than any real call moves (a Java array holds at most 2 GiB).
const MAX_CALL: u64 = 1 << 31;

#[uprobe]
pub fn java_data(ctx: ProbeContext) -> u32 {
    let conn: u64 = ctx.arg(0).unwrap_or(0);
    let direction = ctx.arg::<u64>(1).unwrap_or(u64::MAX) as u32;
    let buf: u64 = ctx.arg(2).unwrap_or(0);
    let len: u64 = ctx.arg(3).unwrap_or(0);
    if conn & JAVA_CONN == 0 || (direction != DIR_EGRESS && direction != DIR_INGRESS) {
        return 0;
    }
    let key = bpf_get_current_pid_tgid();
    if buf == 0 || len == 0 || len > MAX_CALL || ignored(key, conn) {
        return 0;
    }
    emit_data(key, &Emit { conn, buf, fd: -1, source: Source::Java }, direction, len);
    0
}

#[uprobe]
pub fn java_close(ctx: ProbeContext) -> u32 {
    let conn: u64 = ctx.arg(0).unwrap_or(0);
    if conn & JAVA_CONN != 0 {
        forget_conn(SslKey { tgid: bpf_get_current_pid_tgid() >> 32, ssl: conn });
        emit_control(EventKind::ConnClosed, conn);
    }
    0
}
