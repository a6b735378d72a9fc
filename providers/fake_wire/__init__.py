"""Wire formats the fake upstream speaks besides OpenAI's, one module each.

Each module's ``register()`` adds its routes under a path prefix naming the
provider (``/anthropic/v1/messages``, ``/gemini/v1beta/models/...``,
``/cohere/v2/chat``, ``/mistral/v1/...``, ``/groq/openai/v1/...``,
``/together/v1/...``), so one fake server can stand in for every provider:
point ``MUXER_<PROVIDER>_BASE_URL`` at ``http://fake-host/<prefix>``.
"""

from __future__ import annotations


def register_all() -> None:
    # Imported here, not at the top: each dialect imports providers.fake_upstream,
    # which calls this function once it has defined everything they use.
    from . import anthropic, cohere, embeddings, gemini, openai_compat

    for module in (embeddings, anthropic, gemini, cohere, openai_compat):
        module.register()
