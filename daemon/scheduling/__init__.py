"""When jobs run: the ``scheduler`` claims due fires (``firetimes`` computes them from cron and
time zone, ``clock`` is its view of time), and ``fire_runs`` starts a run per fire through a
``launcher`` and records how it ended."""
