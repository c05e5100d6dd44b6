"""A small Flask application served end to end (`tests.apps.flask_app:app`)."""

from __future__ import annotations

import hashlib

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.get("/api/items/<int:item_id>")
def get_item(item_id: int):
    return jsonify({"id": item_id, "name": f"item-{item_id}", "q": request.args.get("q")})


@app.post("/api/items")
def create_item():
    payload = request.get_json()
    return jsonify({"created": payload, "count": len(payload.get("tags", []))}), 201


@app.post("/form")
def form():
    return jsonify({"fields": request.form.to_dict(flat=False)})


@app.post("/upload")
def upload():
    uploaded = request.files["document"]
    data = uploaded.read()
    return jsonify(
        {
            "filename": uploaded.filename,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "title": request.form.get("title"),
        }
    )


@app.get("/stream")
def stream():
    def generate():
        for i in range(100):
            yield f"line {i}\n"

    return app.response_class(generate(), mimetype="text/plain")


@app.errorhandler(404)
def not_found(error):
    return jsonify({"error": "not found"}), 404
