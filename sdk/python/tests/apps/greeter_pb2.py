"""helloworld.HelloRequest / HelloReply built at run time (what `protoc --python_out` would generate)."""

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_file = descriptor_pb2.FileDescriptorProto(name="tests/greeter.proto", package="helloworld", syntax="proto3")
for _name, _field in (("HelloRequest", "name"), ("HelloReply", "message")):
    _msg = _file.message_type.add(name=_name)
    _msg.field.add(
        name=_field,
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
    )
_pool = descriptor_pool.DescriptorPool()
_pool.Add(_file)
HelloRequest = message_factory.GetMessageClass(_pool.FindMessageTypeByName("helloworld.HelloRequest"))
HelloReply = message_factory.GetMessageClass(_pool.FindMessageTypeByName("helloworld.HelloReply"))
