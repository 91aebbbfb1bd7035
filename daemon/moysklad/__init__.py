"""MoySklad connector over JSON API 1.2."""
