"""Keep llama.cpp off AMX in this process, so that weight repacking can still use its AVX-512/AVX2 kernels.

Where a virtual machine advertises AMX but does not enable the tile registers, llama.cpp's AMX kernels die with
SIGILL (runner/cpu_probe.py finds out). llama.cpp asks the kernel for AMX with arch_prctl(ARCH_REQ_XCOMP_PERM)
before it registers its AMX buffer type, and skips AMX ("AMX is not ready to be used!") when that request fails —
after which repacking falls through to its next buffer type, CPU_REPACK, with the AVX-512/AVX2 kernels. llama.cpp
has no setting for this, so qrun makes exactly that request fail: a seccomp filter that answers EPERM to
arch_prctl(ARCH_REQ_XCOMP_PERM, ...) and lets every other system call through.

The filter lasts for the process and its children (seccomp cannot be undone), and it needs no_new_privs, which
only stops set-uid programs from gaining privileges in children. qrun installs it only on machines where the
probe saw AMX crash, so nothing that works is taken away. llama.cpp requests AMX lazily, the first time it lists
its CPU buffer types with repacking on; installing the filter any time before that is enough.
"""

from __future__ import annotations

import ctypes
import platform
import struct

# Linux x86-64 constants (linux/prctl.h, linux/seccomp.h, asm/prctl.h, linux/audit.h, asm/unistd_64.h).
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000
_EPERM = 1
_AUDIT_ARCH_X86_64 = 0xC000003E
_SYS_ARCH_PRCTL = 158
_ARCH_REQ_XCOMP_PERM = 0x1023
# classic BPF opcodes, and the offsets of struct seccomp_data's fields
_BPF_LD_W_ABS, _BPF_JEQ_K, _BPF_RET_K = 0x20, 0x15, 0x06
_OFFSET_NR, _OFFSET_ARCH, _OFFSET_ARG0 = 0, 4, 16

_installed = False


def _insn(code: int, jump_true: int, jump_false: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jump_true, jump_false, k)


# "if x86-64 and arch_prctl and arg0 == ARCH_REQ_XCOMP_PERM: fail with EPERM, else allow"; jumps are relative.
_PROGRAM = b"".join(
    [
        _insn(_BPF_LD_W_ABS, 0, 0, _OFFSET_ARCH),
        _insn(_BPF_JEQ_K, 0, 5, _AUDIT_ARCH_X86_64),
        _insn(_BPF_LD_W_ABS, 0, 0, _OFFSET_NR),
        _insn(_BPF_JEQ_K, 0, 3, _SYS_ARCH_PRCTL),
        _insn(_BPF_LD_W_ABS, 0, 0, _OFFSET_ARG0),
        _insn(_BPF_JEQ_K, 0, 1, _ARCH_REQ_XCOMP_PERM),
        _insn(_BPF_RET_K, 0, 0, _SECCOMP_RET_ERRNO | _EPERM),
        _insn(_BPF_RET_K, 0, 0, _SECCOMP_RET_ALLOW),
    ]
)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def supported() -> bool:
    return platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64")


def deny_amx() -> bool:
    """Make this process's (and its children's) requests for AMX fail; True when in place (idempotent)."""
    global _installed
    if _installed:
        return True
    if not supported():
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    program = ctypes.create_string_buffer(_PROGRAM, len(_PROGRAM))
    fprog = _SockFprog(len(_PROGRAM) // 8, ctypes.addressof(program))
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return False
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        return False
    _installed = True
    return True


def amx_request_denied() -> bool:
    """Ask for AMX the way llama.cpp does; True when the request fails (the guard works, or no AMX at all)."""
    if not supported():
        return True
    libc = ctypes.CDLL(None, use_errno=True)
    xfeature_xtiledata = 18
    return libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, xfeature_xtiledata) != 0
