"""Every call of the Function API on the embedded local cluster, rh.here. No cloud needed.

Run it with `bash scripts/quickstart` (or `python examples/quickstart.py` once rh-core is installed).
"""

import asyncio
import logging

import rh_core as rh


def add(a, b):
    print("adding", a, b)
    return a + b


def double(x):
    return x * 2


def generate(prompt, num_images=1, steps=10):
    logging.getLogger("quickstart").warning("generating %s", prompt)
    return f"{num_images} image(s) of {prompt!r} in {steps} steps"


def main():
    f = rh.function(add).to(rh.here)  # rh.here starts on first use
    print("f(1, 2) =", f(1, 2))  # "(here add-...) adding 1 2" above it: the function's output, shown here
    print("quiet: f(1, 2) =", f(1, 2, stream_logs=False))

    ref = f.remote(1, 2)  # the result stays on the cluster
    print("remote:", ref, "->", rh.get(ref), rh.get([ref, f.remote(3, 4)]), ref.result(timeout=5))

    g = rh.function(double).to(rh.here)
    print("g(ref) =", g(ref), "(the ref was resolved on the cluster)")
    print("rh.here.get(ref.key) =", rh.here.get(ref.key))

    print("enqueue:", f.enqueue(5, 6))
    print("map:", f.map([1, 2, 3], [4, 5, 6]))

    gen = rh.function(generate).to(rh.here)
    print("map with keywords:", gen.map(["A dog.", "A cat."], num_images=[1, 2], steps=50))
    print("map with a broadcast list:", gen.map(["A dog."], num_images=rh.broadcast([1, 2])))
    print("starmap:", gen.starmap([("A dog.", 1), ("A cat.", 2)], steps=50, stream_logs=False))

    async def use_asyncio():
        return await f.acall(1, 2), await f.remote(2, 3)

    print("asyncio:", asyncio.run(use_asyncio()))
    print("options(timeout=10):", f.options(timeout=10)(1, 2))

    try:
        rh.function(double).to(rh.here).options(timeout=5)(object.__new__(type("Unsendable", (), {"__reduce__": None})))
    except rh.SerializationError as error:
        print("a clear error before anything is sent:", error)

    print("server:", {k: v for k, v in rh.here.status().items() if k in ("pid", "port", "executor", "calls")})


if __name__ == "__main__":
    main()
