#!/usr/bin/python3
"""Update a task's resources through containerd's Tasks API.

ctr (1.6 to 2.1) has no `task update`, so the shim tests call containerd's
/containerd.services.tasks.v1.Tasks/Update over gRPC with this.

usage: task-update.py GRPC_SOCKET NAMESPACE CONTAINER_ID RESOURCES_JSON

RESOURCES_JSON is a runtime-spec LinuxResources object, e.g. '{"memory":{"limit":33554432}}'.
The protobuf messages are small enough to encode by hand, which avoids generated code.
"""
import sys

import grpc

RESOURCES_TYPE = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num, data):
    """A length-delimited field (wire type 2)."""
    return varint(num << 3 | 2) + varint(len(data)) + data


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    socket, namespace, container_id, resources = sys.argv[1:]
    any_msg = field(1, RESOURCES_TYPE.encode()) + field(2, resources.encode())
    # UpdateTaskRequest{container_id = 1, resources = 2}
    request = field(1, container_id.encode()) + field(2, any_msg)
    with grpc.insecure_channel("unix://" + socket) as channel:
        update = channel.unary_unary("/containerd.services.tasks.v1.Tasks/Update")
        try:
            update(request, metadata=[("containerd-namespace", namespace)], timeout=60)
        except grpc.RpcError as e:
            sys.stderr.write("update %s: %s: %s\n" % (container_id, e.code().name, e.details()))
            sys.exit(1)


if __name__ == "__main__":
    main()
