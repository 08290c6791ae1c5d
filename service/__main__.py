"""`python -m service`: placeholder until the inference service lands (issue 3)."""

import sys
from pathlib import Path


def main() -> int:
    models = sorted(p.parent.name for p in Path("models").glob("*/manifest.json"))
    print(
        "The inference service is not implemented yet (it arrives with issue 3: /encode, "
        "/reconstruct, /generate, /decode over onnxruntime).\n"
        f"Bundled models ready for it in ./models: {', '.join(models) or 'none'}.",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
