"""Copy-paste examples of a first request: curl, the Python ``openai`` SDK and JavaScript (the ``openai`` package).

With the key's secret (only on the page that reveals it) the examples embed it;
everywhere else they read it from the ``MODELMUXER_API_KEY`` environment variable.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.http import HttpRequest

KEY_VARIABLE = "MODELMUXER_API_KEY"
GREETING = "Hello from ModelMuxer!"


@dataclass(frozen=True)
class Snippet:
    slug: str  # the element id is snippet-<slug>
    label: str
    code: str


def gateway_base_url(request: HttpRequest) -> str:
    """The OpenAI-compatible base URL clients should use: ``MUXER_PUBLIC_BASE_URL``/v1, else this host's /v1."""
    base: str = settings.MUXER_PUBLIC_BASE_URL
    if base:
        return base if base.endswith("/v1") else f"{base}/v1"
    return request.build_absolute_uri("/v1")


def snippets(*, base_url: str, secret: str | None = None) -> list[Snippet]:
    shell_key = secret or f"${KEY_VARIABLE}"
    python_key = f'"{secret}"' if secret else f'os.environ["{KEY_VARIABLE}"]'
    python_import = "" if secret else "import os\n\n"
    js_key = f'"{secret}"' if secret else f"process.env.{KEY_VARIABLE}"
    curl = (
        f"curl {base_url}/chat/completions \\\n"
        f'  -H "Authorization: Bearer {shell_key}" \\\n'
        '  -H "Content-Type: application/json" \\\n'
        f'  -d \'{{"model": "auto", "messages": [{{"role": "user", "content": "{GREETING}"}}]}}\''
    )
    python = (
        f"{python_import}from openai import OpenAI\n\n"
        f'client = OpenAI(base_url="{base_url}", api_key={python_key})\n'
        "reply = client.chat.completions.create(\n"
        '    model="auto",\n'
        f'    messages=[{{"role": "user", "content": "{GREETING}"}}],\n'
        ")\n"
        "print(reply.choices[0].message.content)"
    )
    javascript = (
        'import OpenAI from "openai";\n\n'
        f'const client = new OpenAI({{ baseURL: "{base_url}", apiKey: {js_key} }});\n'
        "const reply = await client.chat.completions.create({\n"
        '  model: "auto",\n'
        f'  messages: [{{ role: "user", content: "{GREETING}" }}],\n'
        "});\n"
        "console.log(reply.choices[0].message.content);"
    )
    return [
        Snippet("curl", "curl", curl),
        Snippet("python", "Python (openai)", python),
        Snippet("js", "JavaScript (openai)", javascript),
    ]
