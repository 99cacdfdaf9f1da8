from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class CheckpointScan(_message.Message):
    __slots__ = ("path", "sha256", "size", "verdict", "globals", "scanner", "scanner_version", "format", "error", "cached")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    GLOBALS_FIELD_NUMBER: _ClassVar[int]
    SCANNER_FIELD_NUMBER: _ClassVar[int]
    SCANNER_VERSION_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    path: str
    sha256: str
    size: int
    verdict: str
    globals: _containers.RepeatedScalarFieldContainer[str]
    scanner: str
    scanner_version: str
    format: str
    error: str
    cached: bool
    def __init__(self, path: _Optional[str] = ..., sha256: _Optional[str] = ..., size: _Optional[int] = ..., verdict: _Optional[str] = ..., globals: _Optional[_Iterable[str]] = ..., scanner: _Optional[str] = ..., scanner_version: _Optional[str] = ..., format: _Optional[str] = ..., error: _Optional[str] = ..., cached: _Optional[bool] = ...) -> None: ...
