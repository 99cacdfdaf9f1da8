"""The x86 32-bit (ia32) syscall ABI: its syscall names, and whether this node has it.

On x86-64 with CONFIG_IA32_EMULATION a 64-bit process can make any syscall
through ``int $0x80`` with ia32 numbers. The per-syscall tracepoints
(syscalls:sys_enter_*) ignore such compat calls (ARCH_TRACE_IGNORE_COMPAT_SYSCALLS),
so every sensor built on them is blind to it. The compat sensor
(agent/sensors/compat.py) watches for them; this module says, once at start,
whether there is anything to watch, and what the sensor's status must say.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import dataclass

log = logging.getLogger(__name__)

# arch/x86/entry/syscalls/syscall_32.tbl (via the uapi asm/unistd_32.h of
# linux 6.x), in number order from 0; "-" is a number with no syscall.
# The table is append-only in the kernel: a newer number is shown with name "".
_IA32_NAMES = """
restart_syscall exit fork read write open close waitpid creat link unlink execve chdir time
mknod chmod lchown break oldstat lseek getpid mount umount setuid getuid stime ptrace alarm
oldfstat pause utime stty gtty access nice ftime sync kill rename mkdir rmdir dup pipe times
prof brk setgid getgid signal geteuid getegid acct umount2 lock ioctl fcntl mpx setpgid
ulimit oldolduname umask chroot ustat dup2 getppid getpgrp setsid sigaction sgetmask
ssetmask setreuid setregid sigsuspend sigpending sethostname setrlimit getrlimit getrusage
gettimeofday settimeofday getgroups setgroups select symlink oldlstat readlink uselib swapon
reboot readdir mmap munmap truncate ftruncate fchmod fchown getpriority setpriority profil
statfs fstatfs ioperm socketcall syslog setitimer getitimer stat lstat fstat olduname iopl
vhangup idle vm86old wait4 swapoff sysinfo ipc fsync sigreturn clone setdomainname uname
modify_ldt adjtimex mprotect sigprocmask create_module init_module delete_module
get_kernel_syms quotactl getpgid fchdir bdflush sysfs personality afs_syscall setfsuid
setfsgid _llseek getdents _newselect flock msync readv writev getsid fdatasync _sysctl mlock
munlock mlockall munlockall sched_setparam sched_getparam sched_setscheduler
sched_getscheduler sched_yield sched_get_priority_max sched_get_priority_min
sched_rr_get_interval nanosleep mremap setresuid getresuid vm86 query_module poll nfsservctl
setresgid getresgid prctl rt_sigreturn rt_sigaction rt_sigprocmask rt_sigpending
rt_sigtimedwait rt_sigqueueinfo rt_sigsuspend pread64 pwrite64 chown getcwd capget capset
sigaltstack sendfile getpmsg putpmsg vfork ugetrlimit mmap2 truncate64 ftruncate64 stat64
lstat64 fstat64 lchown32 getuid32 getgid32 geteuid32 getegid32 setreuid32 setregid32
getgroups32 setgroups32 fchown32 setresuid32 getresuid32 setresgid32 getresgid32 chown32
setuid32 setgid32 setfsuid32 setfsgid32 pivot_root mincore madvise getdents64 fcntl64 - -
gettid readahead setxattr lsetxattr fsetxattr getxattr lgetxattr fgetxattr listxattr
llistxattr flistxattr removexattr lremovexattr fremovexattr tkill sendfile64 futex
sched_setaffinity sched_getaffinity set_thread_area get_thread_area io_setup io_destroy
io_getevents io_submit io_cancel fadvise64 - exit_group lookup_dcookie epoll_create
epoll_ctl epoll_wait remap_file_pages set_tid_address timer_create timer_settime
timer_gettime timer_getoverrun timer_delete clock_settime clock_gettime clock_getres
clock_nanosleep statfs64 fstatfs64 tgkill utimes fadvise64_64 vserver mbind get_mempolicy
set_mempolicy mq_open mq_unlink mq_timedsend mq_timedreceive mq_notify mq_getsetattr
kexec_load waitid - add_key request_key keyctl ioprio_set ioprio_get inotify_init
inotify_add_watch inotify_rm_watch migrate_pages openat mkdirat mknodat fchownat futimesat
fstatat64 unlinkat renameat linkat symlinkat readlinkat fchmodat faccessat pselect6 ppoll
unshare set_robust_list get_robust_list splice sync_file_range tee vmsplice move_pages
getcpu epoll_pwait utimensat signalfd timerfd_create eventfd fallocate timerfd_settime
timerfd_gettime signalfd4 eventfd2 epoll_create1 dup3 pipe2 inotify_init1 preadv pwritev
rt_tgsigqueueinfo perf_event_open recvmmsg fanotify_init fanotify_mark prlimit64
name_to_handle_at open_by_handle_at clock_adjtime syncfs sendmmsg setns process_vm_readv
process_vm_writev kcmp finit_module sched_setattr sched_getattr renameat2 seccomp getrandom
memfd_create bpf execveat socket socketpair bind connect listen accept4 getsockopt
setsockopt getsockname getpeername sendto sendmsg recvfrom recvmsg shutdown userfaultfd
membarrier mlock2 copy_file_range preadv2 pwritev2 pkey_mprotect pkey_alloc pkey_free statx
arch_prctl io_pgetevents rseq - - - - - - semget semctl shmget shmctl shmat shmdt msgget
msgsnd msgrcv msgctl clock_gettime64 clock_settime64 clock_adjtime64 clock_getres_time64
clock_nanosleep_time64 timer_gettime64 timer_settime64 timerfd_gettime64 timerfd_settime64
utimensat_time64 pselect6_time64 ppoll_time64 - io_pgetevents_time64 recvmmsg_time64
mq_timedsend_time64 mq_timedreceive_time64 semtimedop_time64 rt_sigtimedwait_time64
futex_time64 sched_rr_get_interval_time64 pidfd_send_signal io_uring_setup io_uring_enter
io_uring_register open_tree move_mount fsopen fsconfig fsmount fspick pidfd_open clone3
close_range openat2 pidfd_getfd faccessat2 process_madvise epoll_pwait2 mount_setattr
quotactl_fd landlock_create_ruleset landlock_add_rule landlock_restrict_self memfd_secret
process_mrelease futex_waitv set_mempolicy_home_node
"""

IA32_SYSCALLS: tuple[str, ...] = tuple("" if n == "-" else n for n in _IA32_NAMES.split())
"""ia32 syscall name by number (``IA32_SYSCALLS[5] == "open"``)."""


def ia32_name(nr: int) -> str:
    """The ia32 syscall's name, "" for a number this table does not know."""
    return IA32_SYSCALLS[nr] if 0 <= nr < len(IA32_SYSCALLS) else ""


# Run in a child process: when the ABI is off, int $0x80 kills the caller
# with SIGSEGV (#GP: the IDT has no user gate for vector 0x80).
# Machine code: mov eax, 20 (ia32 getpid); int 0x80; ret.
_PROBE = """
import ctypes, mmap, os
code = bytes.fromhex("b814000000cd80c3")
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long)
libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
page = libc.mmap(None, mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_WRITE,
                 mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
if page in (None, ctypes.c_void_p(-1).value):
    raise SystemExit("mmap failed: errno %d" % ctypes.get_errno())
ctypes.memmove(page, code, len(code))
if libc.mprotect(page, mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_EXEC) != 0:
    raise SystemExit("mprotect failed: errno %d" % ctypes.get_errno())
got = ctypes.CFUNCTYPE(ctypes.c_uint32)(page)()
print("pid", got, os.getpid())
"""

SIGSEGV = 11


@dataclass(frozen=True)
class AbiState:
    """What the probe found: "enabled", "disabled" or "unknown" (with why)."""

    state: str
    detail: str = ""
    pid: int | None = None  # the probe child's pid, when it answered (the self-test needs it)


def probe_ia32_abi(python: str = sys.executable, timeout_s: float = 10.0) -> AbiState:
    """Whether ``int $0x80`` works here, tried in a child process (it may crash)."""
    try:
        done = subprocess.run([python, "-I", "-S", "-c", _PROBE], capture_output=True,
                              text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return AbiState("unknown", f"probe could not run: {err}")
    return interpret_probe(done.returncode, done.stdout, done.stderr)


def interpret_probe(returncode: int, stdout: str, stderr: str) -> AbiState:
    """The probe child's outcome as an AbiState (split out to test it without a child)."""
    if returncode == -SIGSEGV:
        return AbiState("disabled", "int $0x80 raised SIGSEGV")
    words = stdout.split()
    if returncode == 0 and len(words) == 3 and words[0] == "pid":
        if words[1] == words[2]:
            return AbiState("enabled", "int $0x80 getpid() answered", int(words[2]))
        return AbiState("unknown", f"int $0x80 getpid() returned {words[1]}, not {words[2]}")
    why = (stderr.strip().splitlines() or [f"exit status {returncode}"])[-1]
    return AbiState("unknown", f"probe failed: {why}")


@dataclass(frozen=True)
class Plan:
    """Whether to attach the detector, and the sensor status to report."""

    attach: bool
    state: str  # SensorStatus.state: "ok", "degraded" or "off"
    detail: str


BLIND = ("agent is BLIND to ia32 syscalls (int $0x80): every syscall-tracepoint sensor "
         "can be bypassed with them; boot the node with ia32_emulation=false")


def plan(abi: AbiState, watch: bool) -> Plan:
    """What the compat sensor does given the ABI probe and the --compat-watch flag.

    Unknown counts as enabled: a probe that failed for an unrelated reason
    (no executable memory allowed, say) must not switch the detector off.
    """
    if abi.state == "disabled":
        return Plan(False, "ok", "ia32 syscall ABI disabled: nothing to watch")
    if not watch:
        return Plan(False, "degraded",
                    "detector off (--no-compat-watch): " + BLIND + _inconclusive(abi))
    return Plan(True, "ok", "watching ia32 syscalls" + _inconclusive(abi))


BY_BTF = "thread_info.status via BTF"
BY_REGISTERS = "register heuristic: a deliberate int $0x80 can pass as native"


def watching(abi: AbiState, by_btf: bool, why_not_btf: str = "") -> Plan:
    """The attached detector's status, saying how it tells ia32 calls apart.

    The kernel's TS_COMPAT flag (by_btf) cannot be forged from user space:
    "ok". The register heuristic can, by a program written to: "degraded",
    with why the flag could not be used.
    """
    if by_btf:
        return Plan(True, "ok", f"watching ia32 syscalls ({BY_BTF})" + _inconclusive(abi))
    why = f"; {why_not_btf}" if why_not_btf else ""
    return Plan(True, "degraded",
                f"watching ia32 syscalls ({BY_REGISTERS}){why}" + _inconclusive(abi))


def _inconclusive(abi: AbiState) -> str:
    return "" if abi.state == "enabled" else f" (ABI probe inconclusive: {abi.detail})"
