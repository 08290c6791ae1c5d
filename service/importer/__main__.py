"""python -m service.importer --encoder E.onnx --decoder D.onnx --out models/NAME [options]"""

from service.importer.cli import main

raise SystemExit(main())
