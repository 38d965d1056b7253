"""``python manage.py seed_demo``: demo products for a fresh installation.

It checks, then inserts: two copies started at once both find the catalog empty and the
second fails on a unique SKU. Run it with ``entrykit once seed -- python manage.py seed_demo``
and copies started together take turns; the later ones find the catalog seeded.
"""

from decimal import Decimal

from django.core.management.base import BaseCommand
from django.db import transaction

from catalog.models import Category, PriceChange, Product

DEMO_PRODUCTS = [
    ("BK-0001", "books", "The Pragmatic Programmer", "39.90"),
    ("BK-0002", "books", "Designing Data-Intensive Applications", "44.50"),
    ("BK-0003", "books", "Two Scoops of Django", "34.00"),
    ("HW-0001", "hardware", "USB-C dock", "129.00"),
    ("HW-0002", "hardware", "Mechanical keyboard", "89.00"),
    ("SW-0001", "software", "Editor licence", "59.00"),
]


class Command(BaseCommand):
    help = "Insert the demo products unless the catalog already has products."

    def handle(self, *args: object, **options: object) -> None:
        existing = Product.objects.count()
        if existing:
            self.stdout.write(f"catalog already seeded ({existing} products)")
            return
        categories = {category.slug: category for category in Category.objects.all()}
        with transaction.atomic():
            for sku, slug, name, price in DEMO_PRODUCTS:
                product = Product.objects.create(
                    sku=sku, category=categories[slug], name=name, price=Decimal(price)
                )
                PriceChange.objects.create(product=product, price=product.price)
        self.stdout.write(self.style.SUCCESS(f"seeded {len(DEMO_PRODUCTS)} products"))
