from __future__ import annotations

from django.conf import settings
from django.db import models


class WireFormat(models.TextChoices):
    OPENAI = "openai", "OpenAI chat completions"
    ANTHROPIC = "anthropic", "Anthropic messages"
    GEMINI = "gemini", "Google Gemini generateContent"
    COHERE = "cohere", "Cohere v2 chat"


class ModelKind(models.TextChoices):
    CHAT = "chat", "Chat"
    EMBEDDING = "embedding", "Embedding"


class QualityTier(models.IntegerChoices):
    ECONOMY = 1, "Economy"
    STANDARD = 2, "Standard"
    PREMIUM = 3, "Premium"


class Provider(models.Model):
    slug = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=100)
    wire_format = models.CharField(max_length=16, choices=WireFormat.choices)
    base_url = models.URLField(help_text="Default API base; MUXER_<SLUG>_BASE_URL overrides it.")
    api_key_env = models.CharField(
        max_length=64, blank=True, help_text="Environment variable holding the credential; blank needs none."
    )
    pricing_url = models.URLField(blank=True)
    enabled = models.BooleanField(default=True)
    # Blank means the gateway-wide MUXER_UPSTREAM_* default.
    connect_timeout_seconds = models.FloatField(null=True, blank=True)
    first_byte_timeout_seconds = models.FloatField(
        null=True, blank=True, help_text="Until the answer starts: response headers, or a stream's first chunk."
    )
    total_timeout_seconds = models.FloatField(null=True, blank=True, help_text="For the whole answer or stream.")

    def __str__(self) -> str:
        return self.name


class Model(models.Model):
    """A model a provider serves, with its list price in USD per one million tokens."""

    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="models")
    name = models.CharField(max_length=120, unique=True, help_text="The id clients send and the provider accepts.")
    kind = models.CharField(max_length=16, choices=ModelKind.choices, default=ModelKind.CHAT)
    input_price_per_mtok_usd = models.DecimalField(max_digits=12, decimal_places=6)
    output_price_per_mtok_usd = models.DecimalField(max_digits=12, decimal_places=6)
    cached_input_price_per_mtok_usd = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    context_window = models.PositiveIntegerField()
    max_output_tokens = models.PositiveIntegerField()
    supports_streaming = models.BooleanField(default=True)
    supports_tools = models.BooleanField(default=False)
    supports_vision = models.BooleanField(default=False)
    supports_json_mode = models.BooleanField(default=False)
    quality_tier = models.PositiveSmallIntegerField(
        choices=QualityTier.choices,
        default=QualityTier.STANDARD,
        help_text="How capable the model is; routers escalate from economy towards premium.",
    )
    enabled = models.BooleanField(default=True)
    fallbacks = models.JSONField(
        default=list,
        blank=True,
        help_text="Model names to try, in order, when this model's provider fails with a retryable error.",
    )
    price_source = models.URLField(blank=True)
    price_as_of = models.DateField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["provider__slug", "name"]

    def __str__(self) -> str:
        return self.name


class ModelPrice(models.Model):
    """A model's price in USD per one million tokens from ``effective_from`` until the next one.

    The catalog charges the newest price already in effect, or the model's own
    fields when none is. A price dated in the future takes effect when it
    arrives; usage rows keep the cost they were charged, so history never moves.
    """

    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="prices")
    effective_from = models.DateTimeField()
    input_price_per_mtok_usd = models.DecimalField(max_digits=12, decimal_places=6)
    output_price_per_mtok_usd = models.DecimalField(max_digits=12, decimal_places=6)
    cached_input_price_per_mtok_usd = models.DecimalField(
        max_digits=12, decimal_places=6, null=True, blank=True, help_text="Blank: cached input costs the input price."
    )
    source = models.URLField(blank=True, help_text="Where the price was published.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model", "-effective_from"]
        constraints = [
            models.UniqueConstraint(fields=["model", "effective_from"], name="model_price_unique_effective_from"),
            models.CheckConstraint(
                condition=models.Q(input_price_per_mtok_usd__gte=0, output_price_per_mtok_usd__gte=0)
                & (
                    models.Q(cached_input_price_per_mtok_usd__isnull=True)
                    | models.Q(cached_input_price_per_mtok_usd__gte=0)
                ),
                name="model_price_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model_id} from {self.effective_from:%Y-%m-%d %H:%M}"


class ProviderCredential(models.Model):
    """An organization's own key for a provider (BYOK), encrypted at rest with Fernet.

    Used instead of the platform's key for that organization's calls.
    """

    organization = models.ForeignKey("accounts.Organization", on_delete=models.CASCADE, related_name="+")
    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="+")
    encrypted_key = models.TextField(help_text="MultiFernet token; never shown.")
    last_four = models.CharField(max_length=4, help_text="For recognising the key when it is shown masked.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["organization", "provider"], name="credential_unique_provider_per_org")
        ]

    def __str__(self) -> str:
        return f"{self.provider.slug} key for {self.organization_id} ({self.masked})"

    @property
    def masked(self) -> str:
        return f"****{self.last_four}"
