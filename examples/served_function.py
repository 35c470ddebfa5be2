"""A function served over HTTP from the embedded local cluster, rh.here, and called as curl would.

Run it with `python examples/served_function.py`: it serves `word_count` as an endpoint, calls it
with Python's own HTTP client, and prints (and runs, when curl is installed) the curl command that
does the same from a shell. The server keeps serving it afterwards, until
`rh.here.remove_endpoint("word_count")` or `rh server stop`.
"""

import json
import shlex
import shutil
import subprocess
import urllib.request

import rh_core as rh


def word_count(text: str, top: int = 3) -> dict:
    counts: dict[str, int] = {}
    for word in text.lower().split():
        counts[word] = counts.get(word, 0) + 1
    return {"words": sum(counts.values()), "top": sorted(counts, key=lambda w: (-counts[w], w))[:top]}


def main() -> None:
    f = rh.function(word_count).to(rh.here)
    url = f.endpoint()  # POST /word_count on the cluster's HTTP door
    token = rh.here.http_token()  # callers send it; f.endpoint(public=True) would need none
    body = json.dumps({"text": "the cat and the hat and the bat", "top": 2}).encode()
    request = urllib.request.Request(url, data=body, headers={"Authorization": f"Bearer {token}",
                                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        print("urllib:", json.load(response))
    command = ["curl", "-sS", "-H", f"Authorization: Bearer {token}", "-d", '{"text": "to be or not to be"}', url]
    print("curl:", shlex.join(command))
    if shutil.which("curl"):
        print(subprocess.run(command, capture_output=True, text=True, check=True).stdout)


if __name__ == "__main__":
    main()
