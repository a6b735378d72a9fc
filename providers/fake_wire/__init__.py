"""Wire formats the fake upstream speaks besides OpenAI's, one module each.

Each module's ``register()`` adds its routes under a path prefix naming the
provider (``/anthropic/v1/messages``, ``/gemini/v1beta/models/...``,
``/cohere/v2/chat``, ``/mistral/v1/...``, ``/groq/openai/v1/...``,
``/together/v1/...``), so one fake server can stand in for every provider:
point ``MUXER_<PROVIDER>_BASE_URL`` at ``http://fake-host/<prefix>``.
"""

from __future__ import annotations

from . import anthropic, cohere, gemini, openai_compat


def register_all() -> None:
    for module in (anthropic, gemini, cohere, openai_compat):
        module.register()
