"""A remote class on the embedded local cluster, rh.here: state that lives on the cluster between calls.

Run it with `python examples/counter.py` once rh-core is installed. The class is defined here, in
__main__, so it travels by value; a class from a module file travels by reference.
"""

import asyncio
import time

import rh_core as rh


class Counter:
    def __init__(self, start=0):
        print("the constructor runs once, on the cluster")
        self.count = start
        self.config = {"start": start}

    def incr(self, by=1):
        print("adding", by)
        self.count += by
        return self.count

    async def incr_later(self, seconds, by=1):  # runs on the instance's own event loop
        await asyncio.sleep(seconds)
        self.count += by
        return self.count

    def count_up(self, n):  # a generator: its items stream back as they are made
        for i in range(n):
            yield self.count + i


def total(incr, times):
    """Runs on the cluster and calls the counter it was handed, there."""
    return [incr() for _ in range(times)][-1]


def main():
    Remote = rh.module(Counter).to(rh.here, name="counter")
    c = Remote(10)  # made on the cluster, or the one living there under "counter"; its prints show here
    try:
        print("c.incr() =", c.incr())
        print("quiet:", c.incr(5, stream_logs=False))  # this call's "adding 5" stays in the cluster's logs
        print("remote:", rh.get(c.incr.remote(1)), "map:", c.incr.map([1, 1, 1]))
        print("acall:", asyncio.run(c.incr.acall(2)))
        print("an attribute read on the cluster: c.config =", c.config, "c.count =", c.count)
        print("items as they come:", list(c.count_up(3)))
        same = Remote()  # by name: the same instance (any process gets it so), its constructor not run again
        print("reached by name:", same.instance_id == c.instance_id, "count", same.count)
        print("a method handed to a function on the cluster:", rh.function(total).to(rh.here)(c.incr, 3))

        Concurrent = rh.module(Counter, max_concurrency=4).to(rh.here, name="counter-async")
        a = Concurrent()
        started = time.monotonic()
        asyncio.run(_four_at_once(a))
        print(f"four 0.5 s async calls with max_concurrency=4 took {time.monotonic() - started:.1f} s")
        a.release()

        rh.here.put("settings", {"lr": 0.1})  # a plain object kept on the cluster
        print("rh.here.get('settings') =", rh.here.get("settings"))
    finally:
        print("released:", c.release())
    try:
        c.incr()
    except rh.InstanceNotFoundError as error:
        print("a call after release says so:", error)


async def _four_at_once(instance):
    return await asyncio.gather(*(instance.incr_later.acall(0.5) for _ in range(4)))


if __name__ == "__main__":
    main()
