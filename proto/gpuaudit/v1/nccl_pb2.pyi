import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NcclCommInit(_message.Message):
    __slots__ = ("function", "nranks", "rank", "comm_id", "library", "library_sha256", "nccl_env", "result", "comm_handles", "parent_comm_id", "parent_comm_handle", "split_color", "split_key", "excluded_count", "excluded_ranks")
    class NcclEnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    NRANKS_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    COMM_ID_FIELD_NUMBER: _ClassVar[int]
    LIBRARY_FIELD_NUMBER: _ClassVar[int]
    LIBRARY_SHA256_FIELD_NUMBER: _ClassVar[int]
    NCCL_ENV_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    COMM_HANDLES_FIELD_NUMBER: _ClassVar[int]
    PARENT_COMM_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_COMM_HANDLE_FIELD_NUMBER: _ClassVar[int]
    SPLIT_COLOR_FIELD_NUMBER: _ClassVar[int]
    SPLIT_KEY_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_COUNT_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_RANKS_FIELD_NUMBER: _ClassVar[int]
    function: str
    nranks: int
    rank: int
    comm_id: str
    library: str
    library_sha256: str
    nccl_env: _containers.ScalarMap[str, str]
    result: int
    comm_handles: _containers.RepeatedScalarFieldContainer[int]
    parent_comm_id: str
    parent_comm_handle: int
    split_color: int
    split_key: int
    excluded_count: int
    excluded_ranks: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, function: _Optional[str] = ..., nranks: _Optional[int] = ..., rank: _Optional[int] = ..., comm_id: _Optional[str] = ..., library: _Optional[str] = ..., library_sha256: _Optional[str] = ..., nccl_env: _Optional[_Mapping[str, str]] = ..., result: _Optional[int] = ..., comm_handles: _Optional[_Iterable[int]] = ..., parent_comm_id: _Optional[str] = ..., parent_comm_handle: _Optional[int] = ..., split_color: _Optional[int] = ..., split_key: _Optional[int] = ..., excluded_count: _Optional[int] = ..., excluded_ranks: _Optional[_Iterable[int]] = ...) -> None: ...

class NcclCollective(_message.Message):
    __slots__ = ("comm_id", "op", "datatype", "calls", "bytes", "first_call", "last_call", "interval_log2_ns", "comm_handle", "rank", "nranks")
    COMM_ID_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    FIRST_CALL_FIELD_NUMBER: _ClassVar[int]
    LAST_CALL_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_LOG2_NS_FIELD_NUMBER: _ClassVar[int]
    COMM_HANDLE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    NRANKS_FIELD_NUMBER: _ClassVar[int]
    comm_id: str
    op: str
    datatype: str
    calls: int
    bytes: int
    first_call: _timestamp_pb2.Timestamp
    last_call: _timestamp_pb2.Timestamp
    interval_log2_ns: _containers.RepeatedScalarFieldContainer[int]
    comm_handle: int
    rank: int
    nranks: int
    def __init__(self, comm_id: _Optional[str] = ..., op: _Optional[str] = ..., datatype: _Optional[str] = ..., calls: _Optional[int] = ..., bytes: _Optional[int] = ..., first_call: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_call: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., interval_log2_ns: _Optional[_Iterable[int]] = ..., comm_handle: _Optional[int] = ..., rank: _Optional[int] = ..., nranks: _Optional[int] = ...) -> None: ...

class NcclCommEnd(_message.Message):
    __slots__ = ("function", "comm_id", "abort", "result", "comm_handle")
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    COMM_ID_FIELD_NUMBER: _ClassVar[int]
    ABORT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    COMM_HANDLE_FIELD_NUMBER: _ClassVar[int]
    function: str
    comm_id: str
    abort: bool
    result: int
    comm_handle: int
    def __init__(self, function: _Optional[str] = ..., comm_id: _Optional[str] = ..., abort: _Optional[bool] = ..., result: _Optional[int] = ..., comm_handle: _Optional[int] = ...) -> None: ...
