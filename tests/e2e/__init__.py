"""End-to-end tests: a real unyoke server process, raw sockets and real HTTP clients."""
