from django.contrib import admin

from .models import UserDataFile


@admin.register(UserDataFile)
class UserDataFileAdmin(admin.ModelAdmin):
    list_display = ["id", "owner", "file", "processing_status", "created_at"]
    list_filter = ["processing_status"]
    search_fields = ["file", "owner__username"]
    readonly_fields = ["processing_log", "created_at", "updated_at"]
