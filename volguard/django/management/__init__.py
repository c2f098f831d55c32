"""The management commands of volguard's Django app."""
