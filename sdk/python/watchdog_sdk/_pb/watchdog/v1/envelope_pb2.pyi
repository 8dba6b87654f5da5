from google.protobuf import timestamp_pb2 as _timestamp_pb2
from watchdog_sdk._pb.io.cloudevents.v1 import cloudevents_pb2 as _cloudevents_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_KIND_UNSPECIFIED: _ClassVar[ErrorKind]
    ERROR_KIND_PERMANENT: _ClassVar[ErrorKind]
    ERROR_KIND_RETRYABLE: _ClassVar[ErrorKind]
    ERROR_KIND_INTERNAL: _ClassVar[ErrorKind]
ERROR_KIND_UNSPECIFIED: ErrorKind
ERROR_KIND_PERMANENT: ErrorKind
ERROR_KIND_RETRYABLE: ErrorKind
ERROR_KIND_INTERNAL: ErrorKind

class Header(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: bytes
    def __init__(self, name: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...

class TraceContext(_message.Message):
    __slots__ = ("traceparent", "tracestate")
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    TRACESTATE_FIELD_NUMBER: _ClassVar[int]
    traceparent: str
    tracestate: str
    def __init__(self, traceparent: _Optional[str] = ..., tracestate: _Optional[str] = ...) -> None: ...

class HttpRequest(_message.Message):
    __slots__ = ("method", "path", "query", "host", "version", "transfer_encoding")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_ENCODING_FIELD_NUMBER: _ClassVar[int]
    method: str
    path: bytes
    query: str
    host: str
    version: str
    transfer_encoding: str
    def __init__(self, method: _Optional[str] = ..., path: _Optional[bytes] = ..., query: _Optional[str] = ..., host: _Optional[str] = ..., version: _Optional[str] = ..., transfer_encoding: _Optional[str] = ...) -> None: ...

class GrpcCall(_message.Message):
    __slots__ = ("method", "client_streaming", "server_streaming")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CLIENT_STREAMING_FIELD_NUMBER: _ClassVar[int]
    SERVER_STREAMING_FIELD_NUMBER: _ClassVar[int]
    method: str
    client_streaming: bool
    server_streaming: bool
    def __init__(self, method: _Optional[str] = ..., client_streaming: bool = ..., server_streaming: bool = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("request_id", "deadline", "trace", "headers", "content_length", "transport", "http", "grpc", "cloudevent")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    CONTENT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    HTTP_FIELD_NUMBER: _ClassVar[int]
    GRPC_FIELD_NUMBER: _ClassVar[int]
    CLOUDEVENT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    deadline: _timestamp_pb2.Timestamp
    trace: TraceContext
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    content_length: int
    transport: HttpRequest
    http: HttpRequest
    grpc: GrpcCall
    cloudevent: _cloudevents_pb2.CloudEvent
    def __init__(self, request_id: _Optional[str] = ..., deadline: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., trace: _Optional[_Union[TraceContext, _Mapping]] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., content_length: _Optional[int] = ..., transport: _Optional[_Union[HttpRequest, _Mapping]] = ..., http: _Optional[_Union[HttpRequest, _Mapping]] = ..., grpc: _Optional[_Union[GrpcCall, _Mapping]] = ..., cloudevent: _Optional[_Union[_cloudevents_pb2.CloudEvent, _Mapping]] = ...) -> None: ...

class ResponseHead(_message.Message):
    __slots__ = ("status", "headers", "trailers", "reply", "error", "message")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    TRAILERS_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    status: int
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    trailers: _containers.RepeatedCompositeFieldContainer[Header]
    reply: _cloudevents_pb2.CloudEvent
    error: ErrorKind
    message: str
    def __init__(self, status: _Optional[int] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., trailers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., reply: _Optional[_Union[_cloudevents_pb2.CloudEvent, _Mapping]] = ..., error: _Optional[_Union[ErrorKind, str]] = ..., message: _Optional[str] = ...) -> None: ...
