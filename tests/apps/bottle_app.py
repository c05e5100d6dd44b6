"""A small Bottle application served end to end (`tests.apps.bottle_app:app`)."""

from __future__ import annotations

import bottle

app = bottle.Bottle()


@app.get("/hello/<name>")
def hello(name: str) -> str:
    return bottle.template("<h1>Hello {{name}}!</h1><p>{{len(name)}} letters</p>", name=name)


@app.post("/form")
def form() -> dict:
    return {
        "fields": dict(bottle.request.forms.decode()),
        "ua": bottle.request.get_header("User-Agent"),
    }


@app.get("/json")
def json_route() -> dict:
    return {"numbers": list(range(5)), "query": dict(bottle.request.query.decode())}


@app.error(404)
def not_found(error: bottle.HTTPError) -> str:
    bottle.response.content_type = "text/plain"
    return "nothing here"
