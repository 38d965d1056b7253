from django.contrib import admin
from django.urls import path

from catalog import views

urlpatterns = [
    path("healthz", views.healthz),
    path("readyz", views.readyz),
    path("products", views.products),
    path("admin/", admin.site.urls),
]
