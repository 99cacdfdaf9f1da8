from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ProcessIoUring(_message.Message):
    __slots__ = ("kind", "ring", "opcode", "op_name", "op_class", "count", "total", "sq_thread", "sqe_flags", "user_data", "ring_fd", "sq_entries", "cq_entries", "setup_flags", "setup_flag_names")
    KIND_FIELD_NUMBER: _ClassVar[int]
    RING_FIELD_NUMBER: _ClassVar[int]
    OPCODE_FIELD_NUMBER: _ClassVar[int]
    OP_NAME_FIELD_NUMBER: _ClassVar[int]
    OP_CLASS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    SQ_THREAD_FIELD_NUMBER: _ClassVar[int]
    SQE_FLAGS_FIELD_NUMBER: _ClassVar[int]
    USER_DATA_FIELD_NUMBER: _ClassVar[int]
    RING_FD_FIELD_NUMBER: _ClassVar[int]
    SQ_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    CQ_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    SETUP_FLAGS_FIELD_NUMBER: _ClassVar[int]
    SETUP_FLAG_NAMES_FIELD_NUMBER: _ClassVar[int]
    kind: str
    ring: str
    opcode: int
    op_name: str
    op_class: str
    count: int
    total: int
    sq_thread: bool
    sqe_flags: int
    user_data: int
    ring_fd: int
    sq_entries: int
    cq_entries: int
    setup_flags: int
    setup_flag_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, kind: _Optional[str] = ..., ring: _Optional[str] = ..., opcode: _Optional[int] = ..., op_name: _Optional[str] = ..., op_class: _Optional[str] = ..., count: _Optional[int] = ..., total: _Optional[int] = ..., sq_thread: _Optional[bool] = ..., sqe_flags: _Optional[int] = ..., user_data: _Optional[int] = ..., ring_fd: _Optional[int] = ..., sq_entries: _Optional[int] = ..., cq_entries: _Optional[int] = ..., setup_flags: _Optional[int] = ..., setup_flag_names: _Optional[_Iterable[str]] = ...) -> None: ...
