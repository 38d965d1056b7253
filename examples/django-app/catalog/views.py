from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, JsonResponse

from .models import Product


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process serves requests. No database, so a database outage does not
    make the orchestrator restart every replica."""
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: the database answers and has every migration this code knows."""
    try:
        connection = connections[DEFAULT_DB_ALIAS]
        executor = MigrationExecutor(connection)
        pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except Exception as error:  # any database error means "not ready"
        return JsonResponse({"status": "database unavailable", "error": str(error)}, status=503)
    if pending:
        names = [f"{migration.app_label}.{migration.name}" for migration, _ in pending]
        return JsonResponse({"status": "migrations pending", "pending": names}, status=503)
    return JsonResponse({"status": "ready"})


def products(request: HttpRequest) -> JsonResponse:
    rows = Product.objects.select_related("category").order_by("sku")[:100]
    return JsonResponse(
        {
            "products": [
                {
                    "sku": product.sku,
                    "name": product.name,
                    "category": product.category.slug,
                    "price": str(product.price),
                }
                for product in rows
            ]
        }
    )
