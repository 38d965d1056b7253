from django.db import models
from django.utils import timezone


class Category(models.Model):
    name = models.CharField(max_length=100, unique=True)
    slug = models.SlugField(max_length=100, unique=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "categories"

    def __str__(self) -> str:
        return self.name


class Product(models.Model):
    category = models.ForeignKey(Category, on_delete=models.PROTECT, related_name="products")
    sku = models.CharField(max_length=32, unique=True)
    name = models.CharField(max_length=200)
    price = models.DecimalField(max_digits=10, decimal_places=2)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["sku"]

    def __str__(self) -> str:
        return f"{self.sku} {self.name}"


class PriceChange(models.Model):
    """Every price a product had; the first row of each product is backfilled by 0003."""

    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="price_changes")
    price = models.DecimalField(max_digits=10, decimal_places=2)
    changed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["product", "changed_at"]
        indexes = [models.Index(fields=["product", "changed_at"], name="price_change_product_at")]

    def __str__(self) -> str:
        return f"{self.product_id} {self.price} at {self.changed_at:%Y-%m-%d}"
