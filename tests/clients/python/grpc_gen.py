"""Generates the Python gRPC stubs the client tests use, at test time, from the repository's own protos.

Nothing generated is checked in. `load()` runs protoc (from grpcio-tools, pinned in requirements.txt) once per
process into a temporary directory that is removed at exit, puts it on `sys.path` and returns the modules:

- `function_pb2`, `function_pb2_grpc`: proto/watchdog/v1/function.proto (`watchdog.v1.Function`, `CloudEvents`)
- `cloudevents_pb2`: proto/io/cloudevents/v1/cloudevents.proto (`io.cloudevents.v1.CloudEvent`, `CloudEventBatch`)
- `greeter_pb2`, `greeter_pb2_grpc`: examples/grpc/greeter.proto (`helloworld.Greeter`)

The protos are copied under a private package prefix (`wdgen/`) and only the copies' `import "..."` lines of the
project's own protos are rewritten, as sdk/python/generate.sh does: a generated top-level `io` package would
shadow Python's standard library `io`. Proto package names, hence the wire format and the gRPC method paths,
are untouched.
"""

from __future__ import annotations

import atexit
import importlib
import re
import shutil
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[3]
PREFIX = "wdgen"
# (source file, path under the generated tree)
PROTOS = [
    (REPO / "proto" / "io" / "cloudevents" / "v1" / "cloudevents.proto", "io/cloudevents/v1/cloudevents.proto"),
    (REPO / "proto" / "watchdog" / "v1" / "function.proto", "watchdog/v1/function.proto"),
    (REPO / "examples" / "grpc" / "greeter.proto", "helloworld/greeter.proto"),
]
_IMPORT = re.compile(r'^(import\s+(?:public\s+|weak\s+)?")((?:watchdog|io)/)', re.MULTILINE)

_loaded: SimpleNamespace | None = None


def _generate(out: Path) -> None:
    from grpc_tools import protoc  # imported here so a missing grpcio-tools fails only the gRPC tests

    src = out / "src"
    for source, rel in PROTOS:
        dest = src / PREFIX / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(_IMPORT.sub(rf"\1{PREFIX}/\2", source.read_text()))
    gen = out / "gen"
    gen.mkdir()
    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto bundled with grpcio-tools
    args = [
        "grpc_tools.protoc",
        f"-I{src}",
        f"-I{include}",
        f"--python_out={gen}",
        f"--grpc_python_out={gen}",
        *(str(src / PREFIX / rel) for _, rel in PROTOS),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    for d in [gen / PREFIX, *(p for p in (gen / PREFIX).rglob("*") if p.is_dir())]:
        (d / "__init__.py").touch()


def load() -> SimpleNamespace:
    """The generated modules (generated on the first call)."""
    global _loaded
    if _loaded is None:
        out = Path(tempfile.mkdtemp(prefix="ng-watchdog-grpc-gen-"))
        atexit.register(shutil.rmtree, out, ignore_errors=True)
        _generate(out)
        sys.path.insert(0, str(out / "gen"))
        mod = lambda name: importlib.import_module(f"{PREFIX}.{name}")  # noqa: E731
        _loaded = SimpleNamespace(
            cloudevents_pb2=mod("io.cloudevents.v1.cloudevents_pb2"),
            function_pb2=mod("watchdog.v1.function_pb2"),
            function_pb2_grpc=mod("watchdog.v1.function_pb2_grpc"),
            greeter_pb2=mod("helloworld.greeter_pb2"),
            greeter_pb2_grpc=mod("helloworld.greeter_pb2_grpc"),
        )
    return _loaded
