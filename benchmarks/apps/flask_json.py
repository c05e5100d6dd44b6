"""Real-app workload 1: a Flask JSON endpoint.

``GET /`` answers a small JSON document built per request with ``jsonify``: Flask's
routing, request context, JSON provider and response object are all on the path, as in
a typical API endpoint. Served as ``flask_json:app``.
"""

from flask import Flask, jsonify, request

app = Flask(__name__)

USERS = [{"id": i, "name": f"user{i}", "active": i % 3 != 0, "score": i * 1.5} for i in range(10)]


@app.get("/")
def index():  # type: ignore[no-untyped-def]
    return jsonify(
        users=USERS,
        count=len(USERS),
        method=request.method,
        path=request.path,
    )
