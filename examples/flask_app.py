"""A Flask application served by unyoke: ``unyoke examples.flask_app:app``.

Needs Flask (``pip install flask``). Try ``curl localhost:8000/hello/you`` and
``curl -d 'text=hi' localhost:8000/echo``.
"""

from __future__ import annotations

from flask import Flask, Response, jsonify, request

app = Flask(__name__)


@app.get("/")
def index() -> str:
    """The front page."""
    return "Hello from Flask on unyoke!\n"


@app.get("/hello/<name>")
def hello(name: str) -> str:
    """Greet whoever the path names."""
    return f"Hello, {name}!\n"


@app.post("/echo")
def echo() -> Response:
    """Send back the form fields and the request's size, as JSON."""
    return jsonify(form=request.form.to_dict(), content_length=request.content_length)


if __name__ == "__main__":
    import unyoke

    unyoke.serve(app)
