"""Supervision backends: how an agent process is started, watched and stopped at each isolation level."""
