"""An ASGI app serving slices of any version of any dataset, without a thread per
request: every read is awaited on the server's event loop (snapref.open_async).

Run it (``pip install 'snapref[serve]'``)::

    SNAPREF_REPO=./warehouse uvicorn examples.asgi_app:app

then ask::

    curl 'localhost:8000/air/versions'
    curl 'localhost:8000/air/temp?version=1&slice=0,0:2,0:3'
    curl 'localhost:8000/air/temp?version=v2025-qc&slice=0,0,0'
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import snapref


def parse_slice(text: str | None) -> tuple[int | slice, ...]:
    """``"0,1:3,:"`` -> ``(0, slice(1, 3), slice(None))``; None or "" selects everything."""
    if not text:
        return ()
    out: list[int | slice] = []
    for part in text.split(","):
        if ":" in part:
            start, _, stop = part.partition(":")
            out.append(slice(int(start) if start else None, int(stop) if stop else None))
        else:
            out.append(int(part))
    return tuple(out)


def json_values(values: Any) -> Any:
    """Array values as JSON allows them: NaN (a masked value, often) becomes null."""
    array = np.asarray(values)
    if array.dtype.kind == "f" and np.isnan(array).any():
        array = np.where(np.isnan(array), None, array.astype(object))
    return array.tolist()


def create_app(repo: snapref.Repository | str) -> Starlette:
    """The app over one repository (a URL is connected once, here)."""
    repository = repo if isinstance(repo, snapref.Repository) else snapref.connect(repo)

    async def versions(request: Request) -> JSONResponse:
        name = request.path_params["dataset"]
        try:
            history = repository.log(name)
        except snapref.NotFoundError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        return JSONResponse([s.to_json() for s in history])

    async def array_slice(request: Request) -> JSONResponse:
        name = request.path_params["dataset"]
        version = request.query_params.get("version")
        try:
            snap = repository.resolve(name, version)
        except snapref.NotFoundError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        try:
            selection = parse_slice(request.query_params.get("slice"))
        except ValueError as exc:
            return JSONResponse({"error": f"bad slice: {exc}"}, status_code=400)
        group = await snapref.open_snapshot_async(repository, snap)
        try:
            array = await group.getitem(request.path_params["array"])
        except KeyError:
            return JSONResponse({"error": f"no array {request.path_params['array']!r}"}, 404)
        try:
            values = await array.getitem(selection)
        except IndexError as exc:  # out of bounds, or more indices than dimensions
            return JSONResponse({"error": f"bad slice for shape {array.shape}: {exc}"}, 400)
        return JSONResponse(
            {
                "dataset": name,
                "version": snap.version,
                "snapshot": snap.id,
                "shape": list(values.shape),
                "values": json_values(values),
            }
        )

    return Starlette(
        routes=[
            Route("/{dataset}/versions", versions),
            Route("/{dataset}/{array}", array_slice),
        ]
    )


app = create_app(os.environ["SNAPREF_REPO"]) if os.environ.get("SNAPREF_REPO") else None
