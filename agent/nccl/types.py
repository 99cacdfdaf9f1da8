"""NCCL's enums as the kernel records carry them, and the communicator id.

Values are those of NVIDIA/nccl src/nccl.h.in (ncclDataType_t is append-only
there; a type newer than this table is reported by number with size 0).
"""

from __future__ import annotations

import hashlib
import re

from agent.sensors.records import BPF_DIR, C


def header_enums(text: str) -> dict[str, int]:
    """NAME = value pairs of the enums of a C header (nccl_events.h keeps its
    codes in enums: the numeric #defines are the size limits)."""
    out: dict[str, int] = {}
    for body in re.findall(r"^enum \w+ \{(.*?)\};", text, flags=re.M | re.S):
        out.update((n, int(v)) for n, v in re.findall(r"(\w+)\s*=\s*(\d+)", body))
    return out


E = header_enums((BPF_DIR / "nccl_events.h").read_text())
ID_LEN: int = C["NCCL_ID_LEN"]
HIST_BUCKETS: int = C["NCCL_HIST_BUCKETS"]
DTYPE_NONE: int = E["NCCL_DTYPE_NONE"]

# ncclDataType_t -> (name, bytes per element). fp8 types are one byte each.
DATATYPES: dict[int, tuple[str, int]] = {
    0: ("int8", 1),
    1: ("uint8", 1),
    2: ("int32", 4),
    3: ("uint32", 4),
    4: ("int64", 8),
    5: ("uint64", 8),
    6: ("float16", 2),
    7: ("float32", 4),
    8: ("float64", 8),
    9: ("bfloat16", 2),
    10: ("float8e4m3", 1),
    11: ("float8e5m2", 1),
}

# nccl_coll_key.op (NCCL_OP_* in nccl_events.h) -> the name nccl.collective carries
OPS: dict[int, str] = {
    E["NCCL_OP_ALLREDUCE"]: "AllReduce",
    E["NCCL_OP_BROADCAST"]: "Broadcast",
    E["NCCL_OP_REDUCE"]: "Reduce",
    E["NCCL_OP_ALLGATHER"]: "AllGather",
    E["NCCL_OP_REDUCESCATTER"]: "ReduceScatter",
    E["NCCL_OP_SEND"]: "Send",
    E["NCCL_OP_RECV"]: "Recv",
    E["NCCL_OP_GROUPSTART"]: "GroupStart",
    E["NCCL_OP_GROUPEND"]: "GroupEnd",
    E["NCCL_OP_ALLTOALL"]: "AlltoAll",
    E["NCCL_OP_GATHER"]: "Gather",
    E["NCCL_OP_SCATTER"]: "Scatter",
    E["NCCL_OP_PUTSIGNAL"]: "PutSignal",
    E["NCCL_OP_SIGNAL"]: "Signal",
    E["NCCL_OP_WAITSIGNAL"]: "WaitSignal",
}

INIT_FUNCTIONS: dict[int, str] = {
    E["NCCL_FN_INIT_RANK"]: "ncclCommInitRank",
    E["NCCL_FN_INIT_RANK_CONFIG"]: "ncclCommInitRankConfig",
    E["NCCL_FN_INIT_ALL"]: "ncclCommInitAll",
    E["NCCL_FN_INIT_RANK_SCALABLE"]: "ncclCommInitRankScalable",
    E["NCCL_FN_SPLIT"]: "ncclCommSplit",
    E["NCCL_FN_SHRINK"]: "ncclCommShrink",
}
END_FUNCTIONS: dict[int, str] = {
    E["NCCL_FN_DESTROY"]: "ncclCommDestroy",
    E["NCCL_FN_ABORT"]: "ncclCommAbort",
}
FN_INIT_ALL: int = E["NCCL_FN_INIT_ALL"]
FN_ABORT: int = E["NCCL_FN_ABORT"]
FN_SPLIT: int = E["NCCL_FN_SPLIT"]
FN_SHRINK: int = E["NCCL_FN_SHRINK"]
MAX_EXCLUDED: int = C["NCCL_MAX_EXCLUDED"]

_M64 = (1 << 64) - 1
SPLIT_TAG = 0x54494C5053434E4E  # NCCL_SPLIT_TAG in agent/bpf/nccl.c
SHRINK_TAG = 0x4B4E49524853434E  # NCCL_SHRINK_TAG


def _mix64(z: int) -> int:
    """splitmix64's finalizer (nccl_mix64 in agent/bpf/nccl.c)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def derive_id(parent_id: bytes, salt: int) -> bytes:
    """A derived communicator's 128-byte stand-in id (nccl_derive in
    agent/bpf/nccl.c): each little-endian 64-bit word i of the parent's id
    becomes mix64(word ^ salt ^ i << 56). mix64 is a bijection, so distinct
    parents give distinct children for one salt."""
    if len(parent_id) != ID_LEN:
        raise ValueError(f"an ncclUniqueId is {ID_LEN} bytes, got {len(parent_id)}")
    words = (int.from_bytes(parent_id[i:i + 8], "little") for i in range(0, ID_LEN, 8))
    return b"".join(_mix64(w ^ salt ^ (i << 56)).to_bytes(8, "little")
                    for i, w in enumerate(words))


def split_id(parent_id: bytes, color: int) -> bytes:
    """The stand-in id of the child ncclCommSplit makes of the communicator
    ``parent_id`` for ``color`` (nccl_up_split), so comm_id(split_id(uid, c))
    names that child on every rank: salt SPLIT_TAG ^ (color as u32) x
    0x9e3779b97f4a7c15."""
    return derive_id(parent_id, SPLIT_TAG ^ (((color & 0xFFFFFFFF) * 0x9E3779B97F4A7C15) & _M64))


def shrink_id(parent_id: bytes, excluded: list[int]) -> bytes:
    """The stand-in id of the communicator ncclCommShrink makes of
    ``parent_id`` without the ranks ``excluded`` (nccl_up_shrink): the salt
    mixes in their count, then each of the first MAX_EXCLUDED ranks with its
    position."""
    salt = _mix64(SHRINK_TAG ^ (len(excluded) & 0xFFFFFFFF))
    for i, r in enumerate(excluded[:MAX_EXCLUDED]):
        salt = _mix64(salt ^ (r & 0xFFFFFFFF) ^ (i << 32))
    return derive_id(parent_id, salt)

LIBRARY_NAME = re.compile(r"^libnccl\.so(\.\d+)*$")
"""File names of NCCL's library: libnccl.so, libnccl.so.2, libnccl.so.2.27.3.
(libnccl-net-*.so plugins and libnccl_static are other things.)"""


def datatype_name(dtype: int) -> str:
    """"float16" for 6; "" for a group count; "type12" for one newer than the table."""
    if dtype == DTYPE_NONE:
        return ""
    known = DATATYPES.get(dtype)
    return known[0] if known else f"type{dtype}"


def datatype_size(dtype: int) -> int:
    """Bytes per element; 0 when unknown (bytes then read 0, never a guess)."""
    known = DATATYPES.get(dtype)
    return known[1] if known else 0


def comm_id(unique_id: bytes) -> str:
    """The public name of a communicator: hex of SHA-256 of its 128-byte
    ncclUniqueId, first 128 bits. Every rank hashes the same bytes, so every
    rank of one communicator reports the same comm_id; it does not reveal the
    id itself (which holds the root's bootstrap address and a secret magic)."""
    if len(unique_id) != ID_LEN:
        raise ValueError(f"an ncclUniqueId is {ID_LEN} bytes, got {len(unique_id)}")
    return hashlib.sha256(unique_id).hexdigest()[:32]


def is_nccl_library(path: str) -> bool:
    """Whether a mapped file's path names an NCCL core library."""
    name = path.rsplit("/", 1)[-1].removesuffix(" (deleted)")
    return LIBRARY_NAME.match(name) is not None


def nccl_env(environ: bytes) -> dict[str, str]:
    """The NCCL_* variables of a /proc/PID/environ blob (NUL-separated)."""
    out: dict[str, str] = {}
    for item in environ.split(b"\0"):
        if item.startswith(b"NCCL_") and b"=" in item:
            key, _, value = item.partition(b"=")
            out[key.decode(errors="replace")] = value.decode(errors="replace")
    return out
