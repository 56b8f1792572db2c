"""A plain HTML page for /docs, written from the app's own OpenAPI schema.

FastAPI's default /docs page loads Swagger UI's JavaScript and CSS from a CDN, which fails
offline and would be the only thing the server does not serve itself. Vendoring
swagger-ui-dist would add over a megabyte of minified JavaScript to the package for a
page that only has to list five endpoints, so the schema is rendered here instead; the
full machine-readable schema stays at /openapi.json for tools that want it.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

METHODS = ("get", "post", "put", "patch", "delete")


def render_docs(schema: dict[str, Any]) -> str:
    info = schema.get("info", {})
    sections = [
        _operation(path, method, op)
        for path, item in schema.get("paths", {}).items()
        for method, op in item.items() if method in METHODS
    ]
    title = escape(f"{info.get('title', 'API')} {info.get('version', '')}".strip())
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}: HTTP API</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/style.css">
</head>
<body class="docs">
<main>
<h1>{title}: HTTP API</h1>
<p>{escape(info.get('description', ''))} The machine-readable schema is at
<a href="/openapi.json">/openapi.json</a>; the drawing page is at <a href="/">/</a>.
Errors are JSON: <code>{{"error": "...", "detail": ...}}</code>.</p>
{''.join(sections)}
</main>
</body>
</html>
"""


def _operation(path: str, method: str, op: dict[str, Any]) -> str:
    params = op.get("parameters", [])
    rows = "".join(
        f"<tr><td><code>{escape(p['name'])}</code></td><td>{escape(p.get('in', ''))}</td>"
        f"<td>{escape(_type(p.get('schema', {})))}</td>"
        f"<td>{escape(_default(p.get('schema', {})))}</td>"
        f"<td>{escape(p.get('description', ''))}</td></tr>"
        for p in params
    )
    table = ("<table><thead><tr><th>parameter</th><th>in</th><th>type</th><th>default</th>"
             f"<th>meaning</th></tr></thead><tbody>{rows}</tbody></table>" if rows else "")
    body = op.get("requestBody")
    body_html = ""
    if body:
        kinds = ", ".join(f"<code>{escape(k)}</code>" for k in body.get("content", {}))
        body_html = f"<p>Body ({kinds}): {escape(body.get('description', ''))}</p>"
    responses = "".join(
        f"<li><code>{escape(code)}</code> {escape(r.get('description', ''))}</li>"
        for code, r in sorted(op.get("responses", {}).items())
    )
    example = _example(path, method, body is not None)
    return f"""<section>
<h2><span class="method">{method.upper()}</span> <code>{escape(path)}</code></h2>
<p>{escape(op.get('summary', ''))}. {escape(op.get('description', '') or '')}</p>
{table}{body_html}
<p>Responses:</p><ul>{responses}</ul>
<pre><code>{escape(example)}</code></pre>
</section>
"""


def _default(schema: dict[str, Any]) -> str:
    return json.dumps(schema["default"]) if "default" in schema else ""


def _type(schema: dict[str, Any]) -> str:
    if "type" in schema:
        return str(schema["type"])
    return " or ".join(_type(s) for s in schema.get("anyOf", [])) or "any"


def _example(path: str, method: str, has_body: bool) -> str:
    url = f"http://127.0.0.1:8000{path}"
    if not has_body:
        return f"curl {url}"
    return (f"curl -F file=@digit.png '{url}?top_k=3'\n"
            f"curl --data-binary @digit.png -H 'Content-Type: image/png' '{url}?number=true'")
