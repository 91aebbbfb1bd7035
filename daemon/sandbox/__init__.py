"""Protocol-faithful emulators of 1C:UT 11 OData and MoySklad JSON API 1.2, with demo data."""
