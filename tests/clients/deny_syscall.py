#!/usr/bin/env python3
"""Run a command with one system call answered EPERM, as a container runtime's
seccomp profile or an LSM would: a seccomp filter installed with ctypes, then
exec. x86-64 only (the syscall number is x86-64's).

Usage: deny_syscall.py SYSCALL -- COMMAND [ARGS...]   (SYSCALL: perf_event_open)
"""
import ctypes
import errno
import os
import platform
import struct
import sys

NR = {"perf_event_open": 298}
AUDIT_ARCH_X86_64 = 0xC000003E
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000
# Classic BPF: ld [4] (arch); jeq; ld [0] (nr); jeq; ret ERRNO; ret ALLOW.
LD_W_ABS, JEQ_K, RET_K = 0x20, 0x15, 0x06


def insn(code, jt, jf, k):
    return struct.pack("HBBI", code, jt, jf, k)


def main():
    if platform.machine() != "x86_64" or len(sys.argv) < 4 or sys.argv[2] != "--":
        sys.exit(__doc__)
    nr = NR[sys.argv[1]]
    prog = b"".join([
        insn(LD_W_ABS, 0, 0, 4),
        insn(JEQ_K, 0, 3, AUDIT_ARCH_X86_64),
        insn(LD_W_ABS, 0, 0, 0),
        insn(JEQ_K, 0, 1, nr),
        insn(RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.EPERM),
        insn(RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ])
    buf = ctypes.create_string_buffer(prog)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(prog) // 8, ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        sys.exit("PR_SET_NO_NEW_PRIVS: " + os.strerror(ctypes.get_errno()))
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        sys.exit("PR_SET_SECCOMP: " + os.strerror(ctypes.get_errno()))
    os.execvp(sys.argv[3], sys.argv[3:])


if __name__ == "__main__":
    main()
