"""`python -m service.grpc.regenerate` (`make grpc-code`): the Python modules of `oip.proto`,
written beside it by grpcio-tools' protoc (a dev dependency: the service only imports them).

One change to protoc's output: the messages are registered in a descriptor pool of their own
instead of protobuf's default one. Their names (`inference.ModelInferRequest`, ...) must be
Triton's for the wire, and tritonclient.grpc registers the same names from its own file in the
default pool; two files defining one name in one pool cannot both be imported, so a process (a
test, an application that calls this service and embeds it) could not hold both.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]  # the import root: the modules import each other as service.grpc.*
PROTO = HERE / "oip.proto"
MODULES = ("oip_pb2.py", "oip_pb2.pyi", "oip_pb2_grpc.py")
DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
OWN_POOL = "_descriptor_pool.DescriptorPool().AddSerializedFile("


def generate() -> dict[str, str]:
    """The generated modules' text, by file name."""
    from grpc_tools import protoc  # dev dependency

    with tempfile.TemporaryDirectory() as out:
        code = protoc.main(
            [
                "protoc",
                f"-I{ROOT}",
                f"--python_out={out}",
                f"--pyi_out={out}",
                f"--grpc_python_out={out}",
                str(PROTO.relative_to(ROOT)),
            ]
        )
        if code != 0:
            raise RuntimeError(f"protoc failed on {PROTO} (exit {code})")
        written = Path(out) / HERE.relative_to(ROOT)
        texts = {name: (written / name).read_text() for name in MODULES}
    pb2 = texts["oip_pb2.py"]
    if pb2.count(DEFAULT_POOL) != 1:
        raise RuntimeError(f"protoc's output no longer holds {DEFAULT_POOL!r}: update this script")
    texts["oip_pb2.py"] = pb2.replace(DEFAULT_POOL, OWN_POOL)
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.grpc.regenerate", description=__doc__)
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write to (default: here)")
    args = parser.parse_args(argv)
    for name, text in generate().items():
        (args.out / name).write_text(text)
        print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
