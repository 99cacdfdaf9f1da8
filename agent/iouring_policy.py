"""io_uring facts the io_uring sensor reports with: opcode classes, setup flag
names, and what its status says given kernel.io_uring_disabled.

Requests submitted through an io_uring ring bypass the syscall tracepoints of
every other sensor (agent/bpf/iouring.c). The kernel names each opcode itself
(the tracepoint's op_str); this module only sorts the numbers into the classes
rules care about, from include/uapi/linux/io_uring.h (enum io_uring_op, which
is append-only) as of linux 6.18.
"""

from __future__ import annotations

from pathlib import Path

DISABLED_SYSCTL = Path("/proc/sys/kernel/io_uring_disabled")
GROUP_SYSCTL = Path("/proc/sys/kernel/io_uring_group")

# enum io_uring_op, in number order from 0, named as the kernel names them
# (io_uring/opdef.c: IORING_OP_EPOLL_CTL is "EPOLL"); checked against linux
# 6.18's own names, which end at 62 (PIPE).
_OP_NAMES = """
NOP READV WRITEV FSYNC READ_FIXED WRITE_FIXED POLL_ADD POLL_REMOVE SYNC_FILE_RANGE SENDMSG
RECVMSG TIMEOUT TIMEOUT_REMOVE ACCEPT ASYNC_CANCEL LINK_TIMEOUT CONNECT FALLOCATE OPENAT CLOSE
FILES_UPDATE STATX READ WRITE FADVISE MADVISE SEND RECV OPENAT2 EPOLL SPLICE
PROVIDE_BUFFERS REMOVE_BUFFERS TEE SHUTDOWN RENAMEAT UNLINKAT MKDIRAT SYMLINKAT LINKAT MSG_RING
FSETXATTR SETXATTR FGETXATTR GETXATTR SOCKET URING_CMD SEND_ZC SENDMSG_ZC READ_MULTISHOT WAITID
FUTEX_WAIT FUTEX_WAKE FUTEX_WAITV FIXED_FD_INSTALL FTRUNCATE BIND LISTEN RECV_ZC EPOLL_WAIT
READV_FIXED WRITEV_FIXED PIPE
"""
OP_NAMES: tuple[str, ...] = tuple(_OP_NAMES.split())
"""IORING_OP_* name by number (``OP_NAMES[18] == "OPENAT"``)."""

_CLASSES = {
    # opens a file: the path (and so the file) is not seen
    "open": ("OPENAT", "OPENAT2"),
    # changes the file namespace: renames, unlinks, links, directories
    "namespace": ("RENAMEAT", "UNLINKAT", "MKDIRAT", "SYMLINKAT", "LINKAT"),
    "xattr": ("FSETXATTR", "SETXATTR"),
    # makes or joins a connection: the address is not seen
    "network": ("ACCEPT", "CONNECT", "SOCKET", "BIND", "LISTEN"),
    "send_recv": ("SENDMSG", "RECVMSG", "SEND", "RECV", "SEND_ZC", "SENDMSG_ZC", "RECV_ZC"),
    # changes file data through an fd (whose open the other sensors may have seen)
    "write": ("WRITEV", "WRITE_FIXED", "WRITE", "WRITEV_FIXED", "FALLOCATE", "FTRUNCATE",
              "SPLICE", "TEE"),
    "read": ("READV", "READ_FIXED", "READ", "READ_MULTISHOT", "READV_FIXED"),
    # a driver- or protocol-specific command (NVMe passthrough, socket options)
    "passthrough": ("URING_CMD",),
}
OP_CLASS: dict[str, str] = {name: cls for cls, names in _CLASSES.items() for name in names}

# IORING_SETUP_* bits, from bit 0 (linux 6.18).
SETUP_FLAGS: tuple[str, ...] = (
    "IOPOLL", "SQPOLL", "SQ_AFF", "CQSIZE", "CLAMP", "ATTACH_WQ", "R_DISABLED", "SUBMIT_ALL",
    "COOP_TASKRUN", "TASKRUN_FLAG", "SQE128", "CQE32", "SINGLE_ISSUER", "DEFER_TASKRUN",
    "NO_MMAP", "REGISTERED_FD_ONLY", "NO_SQARRAY", "HYBRID_IOPOLL",
)


def op_name(opcode: int, kernel_name: str = "") -> str:
    """The opcode's name: the kernel's own when given, else this table's ("" unknown)."""
    if kernel_name:
        return kernel_name
    return OP_NAMES[opcode] if 0 <= opcode < len(OP_NAMES) else ""


def op_class(opcode: int) -> str:
    """The class of an opcode, by number (a kernel name could be anything)."""
    name = OP_NAMES[opcode] if 0 <= opcode < len(OP_NAMES) else ""
    return OP_CLASS.get(name, "other")


def setup_flag_names(flags: int) -> list[str]:
    """Names of the IORING_SETUP_* bits set; an unknown bit as "BIT<n>"."""
    return [SETUP_FLAGS[bit] if bit < len(SETUP_FLAGS) else f"BIT{bit}"
            for bit in range(32) if flags >> bit & 1]


def read_sysctl(path: Path) -> int | None:
    """An integer sysctl, None when absent (an older kernel) or unreadable."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


ADVICE = "set kernel.io_uring_disabled=2 where no workload needs io_uring"
UNSEEN = ("sees which process submits which io_uring operations and how often, "
          "not their arguments (paths, addresses, data)")


def status_detail(disabled: int | None, group: int | None) -> str:
    """The io_uring sensor's status detail (its state is "ok" in every case).

    The programs stay attached even when io_uring is disabled: they cost
    nothing while no ring is used, and the sysctl only stops new rings, so a
    ring made before it was set keeps working and stays watched.
    """
    if disabled == 2:
        return ("io_uring disabled: nothing to watch (kernel.io_uring_disabled=2; "
                "rings made before that would still be watched)")
    if disabled == 1:
        who = f"CAP_SYS_ADMIN and group {group}" if group is not None and group >= 0 \
            else "CAP_SYS_ADMIN"
        return f"io_uring limited to {who} (kernel.io_uring_disabled=1): {UNSEEN}; {ADVICE}"
    return f"io_uring enabled: {UNSEEN}; {ADVICE}"


def current_detail(disabled_path: Path = DISABLED_SYSCTL, group_path: Path = GROUP_SYSCTL) -> str:
    """status_detail for this node now (the sysctl may change while the agent runs)."""
    return status_detail(read_sysctl(disabled_path), read_sysctl(group_path))
