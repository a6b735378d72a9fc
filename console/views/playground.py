"""Console pages: the playground, a chat completion sent as one of the organization's keys.

With JavaScript the answer streams over ``/ws/console/<org>/playground/``
(``console.consumers.PlaygroundConsumer``); without it the form posts here and
the page shows the whole answer. Both validate with :class:`PlaygroundForm`
and call the gateway in-process, so the request is routed, limited, budgeted
and billed exactly as that key's traffic is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from asgiref.sync import async_to_sync
from django import forms
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import NoReverseMatch, URLPattern, path, reverse

from accounts.models import APIKey, Membership
from accounts.permissions import Perm

from .. import gateway, selectors
from ..access import OrgAccess, org_page

MAX_MESSAGES = 50
MAX_TEXT = 50_000
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class PlaygroundRequest:
    organization_id: int
    key_id: int
    payload: dict[str, Any] = field(default_factory=dict)


def _messages(value: Any) -> list[dict[str, str]]:
    """A chat's messages as the page sends them; raises ValidationError naming what is wrong."""
    if not isinstance(value, list) or not value:
        raise forms.ValidationError("messages must be a non-empty list.")
    if len(value) > MAX_MESSAGES:
        raise forms.ValidationError(f"At most {MAX_MESSAGES} messages.")
    out = []
    for item in value:
        if not isinstance(item, dict) or item.get("role") not in ROLES or not isinstance(item.get("content"), str):
            raise forms.ValidationError("Each message needs a role (system, user or assistant) and text content.")
        if len(item["content"]) > MAX_TEXT:
            raise forms.ValidationError(f"A message may have at most {MAX_TEXT} characters.")
        out.append({"role": item["role"], "content": item["content"]})
    if not any(m["role"] == "user" and m["content"].strip() for m in out):
        raise forms.ValidationError("Write a user message.")
    return out


class PlaygroundForm(forms.Form):
    key_id = forms.TypedChoiceField(label="API key", coerce=int)
    model = forms.ChoiceField(label="Model")
    system = forms.CharField(
        label="System prompt (optional)", required=False, max_length=MAX_TEXT, widget=forms.Textarea(attrs={"rows": 2})
    )
    message = forms.CharField(
        label="Message", required=False, max_length=MAX_TEXT, widget=forms.Textarea(attrs={"rows": 4})
    )
    max_tokens = forms.IntegerField(label="Max tokens (optional)", required=False, min_value=1, max_value=200_000)
    temperature = forms.DecimalField(
        label="Temperature (optional)", required=False, min_value=0, max_value=2, max_digits=4, decimal_places=2
    )

    def __init__(
        self,
        *args: Any,
        keys: list[APIKey],
        models: list[str],
        messages: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        key_field = self.fields["key_id"]
        assert isinstance(key_field, forms.TypedChoiceField)
        key_field.choices = [(key.pk, f"{key.name} ({key.prefix}…)") for key in keys]
        key_field.error_messages["invalid_choice"] = "Choose one of your organization's active keys you may use."
        model_field = self.fields["model"]
        assert isinstance(model_field, forms.ChoiceField)
        model_field.choices = [(name, name) for name in models]
        self.given_messages = messages

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.given_messages is not None:
            try:
                data["messages"] = _messages(self.given_messages)
            except forms.ValidationError as exc:
                self.add_error(None, exc)
            return data
        if not (data.get("message") or "").strip():
            self.add_error("message", "Write a message.")
            return data
        messages = [{"role": "user", "content": data["message"]}]
        if (data.get("system") or "").strip():
            messages.insert(0, {"role": "system", "content": data["system"]})
        data["messages"] = messages
        return data

    def playground_request(self, organization_id: int) -> PlaygroundRequest:
        data = self.cleaned_data
        payload: dict[str, Any] = {"model": data["model"], "messages": data["messages"]}
        if data.get("max_tokens") is not None:
            payload["max_tokens"] = data["max_tokens"]
        if data.get("temperature") is not None:
            payload["temperature"] = float(data["temperature"])
        return PlaygroundRequest(organization_id=organization_id, key_id=data["key_id"], payload=payload)

    def first_error(self) -> str:
        for name, errors in self.errors.items():
            label = "" if name == "__all__" else f"{self.fields[name].label}: "
            return f"{label}{errors[0]}"
        return "The request is not valid."


def playground_request(membership: Membership, content: Any) -> PlaygroundRequest | str:
    """The WebSocket's message checked like the form: the request, or the first error's text."""
    if not isinstance(content, dict):
        return "Send a JSON object."
    organization = membership.organization
    form = PlaygroundForm(
        {name: content.get(name) for name in ("key_id", "model", "max_tokens", "temperature") if name in content},
        keys=selectors.playground_keys(organization=organization, user=membership.user, role=membership.role),
        models=selectors.playground_models(organization=organization),
        messages=content.get("messages"),
    )
    if not form.is_valid():
        return form.first_error()
    return form.playground_request(organization.pk)


@dataclass(frozen=True)
class Answer:
    text: str
    model: str
    route_reason: str
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal | None


def _answer(reply: gateway.GatewayReply) -> Answer:
    body = reply.json()
    choices = body.get("choices") or [{}]
    usage = body.get("usage") or {}
    cost = reply.headers.get("x-muxer-cost-usd")
    return Answer(
        text=str((choices[0].get("message") or {}).get("content") or ""),
        model=reply.headers.get("x-muxer-model", ""),
        route_reason=reply.headers.get("x-muxer-route-reason", ""),
        input_tokens=int(usage.get("prompt_tokens") or 0),
        output_tokens=int(usage.get("completion_tokens") or 0),
        cost_usd=Decimal(cost) if cost else None,
    )


def _url(name: str, slug: str) -> str:
    try:
        return reverse(name, args=[slug])
    except NoReverseMatch:  # that page is not built yet
        return ""


@org_page(Perm.KEYS_CREATE)
def playground_page(request: HttpRequest, access: OrgAccess) -> HttpResponse:
    organization = access.organization
    keys = selectors.playground_keys(organization=organization, user=access.user, role=access.role)
    form = PlaygroundForm(
        request.POST if request.method == "POST" else None,
        keys=keys,
        models=selectors.playground_models(organization=organization),
        initial={"model": "auto"},
    )
    context = access.context(form=form, keys=keys, answer=None, keys_url=_url("console-keys", organization.slug))
    if request.method != "POST":
        return render(request, "console/playground/page.html", context)
    if not form.is_valid():
        return render(request, "console/playground/page.html", context, status=400)
    wanted = form.playground_request(organization.pk)
    reply = async_to_sync(gateway.chat)(
        organization_id=wanted.organization_id, key_id=wanted.key_id, payload=wanted.payload
    )
    if reply.status >= 400:
        form.add_error(None, reply.error_message)
        return render(request, "console/playground/page.html", context, status=400 if reply.status < 500 else 502)
    context["answer"] = _answer(reply)
    return render(request, "console/playground/page.html", context)


urlpatterns: list[URLPattern] = [
    path("<slug:org>/playground/", playground_page, name="console-playground"),
]
