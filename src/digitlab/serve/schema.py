"""The HTTP API's OpenAPI schema as `digitlab serve` publishes it (default settings), for the
committed copy in docs/reference/openapi.json:

    python -m digitlab.serve.schema > docs/reference/openapi.json
"""

from __future__ import annotations

import json
from typing import Any


def openapi_schema() -> dict[str, Any]:
    """/openapi.json of a server started with the default settings (no model is loaded)."""
    from digitlab.serve.app import create_app

    def no_model() -> Any:
        raise RuntimeError("the schema needs no model")

    return create_app(no_model).openapi()


def main() -> None:
    print(json.dumps(openapi_schema(), indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
