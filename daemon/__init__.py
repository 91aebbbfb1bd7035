"""bisnesmedia integration hub: stock replenishment between 1C:UT 11 and MoySklad."""

__version__ = "0.1.0"
