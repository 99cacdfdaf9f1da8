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
}

INIT_FUNCTIONS: dict[int, str] = {
    E["NCCL_FN_INIT_RANK"]: "ncclCommInitRank",
    E["NCCL_FN_INIT_RANK_CONFIG"]: "ncclCommInitRankConfig",
    E["NCCL_FN_INIT_ALL"]: "ncclCommInitAll",
}
END_FUNCTIONS: dict[int, str] = {
    E["NCCL_FN_DESTROY"]: "ncclCommDestroy",
    E["NCCL_FN_ABORT"]: "ncclCommAbort",
}
FN_INIT_ALL: int = E["NCCL_FN_INIT_ALL"]
FN_ABORT: int = E["NCCL_FN_ABORT"]

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
