"""A FastAPI app for tests/test_asgi.py: a module of the working directory, so it travels by reference."""

import os

from fastapi import FastAPI, HTTPException

api = FastAPI()


@api.get("/hello/{name}")
def hello(name: str) -> dict:
    return {"hello": name, "pid": os.getpid()}


@api.post("/items")
def add_item(item: dict) -> dict:
    if "name" not in item:
        raise HTTPException(status_code=422, detail="an item needs a name")
    return {"added": item["name"], "secret_seen": os.environ.get("ASGI_TEST_KEY") is not None}


@api.get("/fail")
def fail() -> dict:
    raise KeyError("no such item in the test app")
