from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class CodeLoad(_message.Message):
    __slots__ = ("path", "sha256", "size", "file_uid", "writable_by_others", "kind", "source", "dev", "inode", "hash_error", "syscall")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    FILE_UID_FIELD_NUMBER: _ClassVar[int]
    WRITABLE_BY_OTHERS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DEV_FIELD_NUMBER: _ClassVar[int]
    INODE_FIELD_NUMBER: _ClassVar[int]
    HASH_ERROR_FIELD_NUMBER: _ClassVar[int]
    SYSCALL_FIELD_NUMBER: _ClassVar[int]
    path: str
    sha256: str
    size: int
    file_uid: int
    writable_by_others: bool
    kind: str
    source: str
    dev: int
    inode: int
    hash_error: str
    syscall: str
    def __init__(self, path: _Optional[str] = ..., sha256: _Optional[str] = ..., size: _Optional[int] = ..., file_uid: _Optional[int] = ..., writable_by_others: _Optional[bool] = ..., kind: _Optional[str] = ..., source: _Optional[str] = ..., dev: _Optional[int] = ..., inode: _Optional[int] = ..., hash_error: _Optional[str] = ..., syscall: _Optional[str] = ...) -> None: ...
