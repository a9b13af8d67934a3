"""The master process: binds the listeners, runs and supervises the gevent workers, reloads.

It is never monkey-patched and never touches a client connection (gunicorn's arbiter split).
"""
