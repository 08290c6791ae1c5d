"""`python -m service.healthcheck`: exit 0 when the local service is ready, else 1.

For container health checks (Docker HEALTHCHECK, compose): the slim images have no curl, and
this needs nothing beyond the standard library. Reads VAE_PORT like the service does.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    url = f"http://127.0.0.1:{os.environ.get('VAE_PORT', '8000')}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
