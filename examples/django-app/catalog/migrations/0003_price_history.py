"""A new table and its backfill: each existing product gets its current price as the first
row of its history, in batches (on a large catalog, the migration that takes minutes)."""

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models

BATCH = 2000


def backfill(apps, schema_editor):
    alias = schema_editor.connection.alias
    Product = apps.get_model("catalog", "Product")
    PriceChange = apps.get_model("catalog", "PriceChange")
    batch = []
    for product in Product.objects.using(alias).only("id", "price", "created_at").iterator():
        batch.append(
            PriceChange(product_id=product.id, price=product.price, changed_at=product.created_at)
        )
        if len(batch) >= BATCH:
            PriceChange.objects.using(alias).bulk_create(batch)
            batch = []
    PriceChange.objects.using(alias).bulk_create(batch)


class Migration(migrations.Migration):
    dependencies = [("catalog", "0002_default_categories")]

    operations = [
        migrations.CreateModel(
            name="PriceChange",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("price", models.DecimalField(decimal_places=2, max_digits=10)),
                ("changed_at", models.DateTimeField(default=django.utils.timezone.now)),
                (
                    "product",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="price_changes",
                        to="catalog.product",
                    ),
                ),
            ],
            options={
                "ordering": ["product", "changed_at"],
                "indexes": [
                    models.Index(fields=["product", "changed_at"], name="price_change_product_at")
                ],
            },
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop),
    ]
