"""A small Falcon application served end to end (`tests.apps.falcon_app:app`)."""

from __future__ import annotations

import falcon


class ThingsResource:
    def __init__(self) -> None:
        self.things: dict = {}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"things": sorted(self.things.values(), key=lambda t: t["id"])}

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        thing = dict(req.get_media())
        thing["id"] = len(self.things) + 1
        self.things[thing["id"]] = thing
        resp.status = falcon.HTTP_201
        resp.location = f"/things/{thing['id']}"
        resp.media = thing


class ThingResource:
    def __init__(self, collection: ThingsResource) -> None:
        self.collection = collection

    def on_get(self, req: falcon.Request, resp: falcon.Response, thing_id: int) -> None:
        thing = self.collection.things.get(thing_id)
        if thing is None:
            raise falcon.HTTPNotFound()
        resp.media = thing


class EchoResource:
    def on_put(self, req: falcon.Request, resp: falcon.Response) -> None:
        # Falcon bounds its stream by Content-Length only; a chunked body is read from the
        # raw wsgi.input, which ends at the body's end (wsgi.input_terminated).
        if req.content_length is None:
            data = req.stream.read()
        else:
            data = req.bounded_stream.read()
        resp.content_type = req.content_type or "application/octet-stream"
        resp.data = data[::-1]


app = falcon.App()
things = ThingsResource()
app.add_route("/things", things)
app.add_route("/things/{thing_id:int}", ThingResource(things))
app.add_route("/reverse", EchoResource())
