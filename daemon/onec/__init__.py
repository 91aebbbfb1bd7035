"""1C:UT 11 connector over the standard OData interface."""
