"""What the daemon tells its operators: structured ``logs`` (redacted), the ``logstream`` hub
behind ``hubctl logs`` and the log history, and ``sdnotify`` (readiness and watchdog for
systemd)."""
