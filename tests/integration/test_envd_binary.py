"""envd accepts binary protobuf (and gzip-compressed messages) as well as JSON.

The E2B SDKs speak Connect with JSON; other Connect clients default to binary. This
drives envd with the connectrpc client generated from our own .proto files.
"""

from __future__ import annotations

import os

import pytest

from hearth._proto.filesystem import filesystem_pb
from hearth._proto.filesystem.filesystem_connect import FilesystemClientSync
from hearth._proto.process import process_pb
from hearth._proto.process.process_connect import ProcessClientSync
from hearth.node.runtime.isolated import IsolatedEnvd

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: uid maps and mounts"),
]


@pytest.fixture(scope="module")
def envd_url():
    with IsolatedEnvd("busybox") as envd:
        yield envd.url


@pytest.mark.parametrize("compression", ["gzip", None])
def test_start_streams_binary_events(envd_url, compression):
    kwargs = {} if compression else {"send_compression": None}
    with ProcessClientSync(envd_url, **kwargs) as client:
        # A long argument makes the request big enough for the client to compress it.
        padding = "x" * 4096
        request = process_pb.StartRequest(
            process=process_pb.ProcessConfig(
                cmd="/bin/sh", args=["-c", f"echo out; echo err >&2; exit 3 # {padding}"]
            ),
            stdin=False,
        )
        events = [r.event.event for r in client.start(request)]  # (kind, value) oneofs
    assert events[0].field == "start" and events[0].value.pid > 0
    outputs = [e.value.output for e in events if e.field == "data"]
    stdout = b"".join(o.value for o in outputs if o.field == "stdout")
    stderr = b"".join(o.value for o in outputs if o.field == "stderr")
    assert (stdout, stderr) == (b"out\n", b"err\n")
    assert events[-1].field == "end"
    assert (events[-1].value.exit_code, events[-1].value.status) == (3, "exit status 3")


def test_unary_binary_calls_and_errors(envd_url):
    with FilesystemClientSync(envd_url) as client:
        made = client.make_dir(filesystem_pb.MakeDirRequest(path="/home/user/bin-dir"))
        assert made.entry.path == "/home/user/bin-dir"
        assert made.entry.type == filesystem_pb.FileType.DIRECTORY
        listed = client.list_dir(filesystem_pb.ListDirRequest(path="/home/user", depth=1))
        assert "bin-dir" in [e.name for e in listed.entries]
        with pytest.raises(Exception) as missing:
            client.stat(filesystem_pb.StatRequest(path="/no/such/file"))
    assert "not_found" in repr(missing.value).lower() or "not found" in str(missing.value)
