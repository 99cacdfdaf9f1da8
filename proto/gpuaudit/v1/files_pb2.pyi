from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class FileWrite(_message.Message):
    __slots__ = ("path", "op", "file_uid", "owner_mismatch", "old_path", "tree", "flags", "result")
    PATH_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    FILE_UID_FIELD_NUMBER: _ClassVar[int]
    OWNER_MISMATCH_FIELD_NUMBER: _ClassVar[int]
    OLD_PATH_FIELD_NUMBER: _ClassVar[int]
    TREE_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    path: str
    op: str
    file_uid: int
    owner_mismatch: bool
    old_path: str
    tree: str
    flags: int
    result: int
    def __init__(self, path: _Optional[str] = ..., op: _Optional[str] = ..., file_uid: _Optional[int] = ..., owner_mismatch: _Optional[bool] = ..., old_path: _Optional[str] = ..., tree: _Optional[str] = ..., flags: _Optional[int] = ..., result: _Optional[int] = ...) -> None: ...
