"""A data migration: the categories every installation starts with.

Run by two processes at once on a fresh database, both find the table empty and both insert:
one fails on the unique name. entrykit runs `manage.py migrate` under its replica lock.
"""

from django.db import migrations

DEFAULT_CATEGORIES = [
    ("Uncategorized", "uncategorized"),
    ("Books", "books"),
    ("Hardware", "hardware"),
    ("Software", "software"),
]


def create_categories(apps, schema_editor):
    Category = apps.get_model("catalog", "Category")
    for name, slug in DEFAULT_CATEGORIES:
        Category.objects.using(schema_editor.connection.alias).get_or_create(
            slug=slug, defaults={"name": name}
        )


def delete_categories(apps, schema_editor):
    Category = apps.get_model("catalog", "Category")
    Category.objects.using(schema_editor.connection.alias).filter(
        slug__in=[slug for _, slug in DEFAULT_CATEGORIES], products__isnull=True
    ).delete()


class Migration(migrations.Migration):
    dependencies = [("catalog", "0001_initial")]

    operations = [migrations.RunPython(create_categories, delete_categories)]
