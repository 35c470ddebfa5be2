"""The wire protocol's messages (rh_core.wire.messages): each one survives its trip, and what a hostile
peer sends is refused with an error that names the field."""

from __future__ import annotations

import socket

import orjson
import pytest

from rh_core.errors import ProtocolError
from rh_core.wire.link import Link, as_frame
from rh_core.wire.messages import (
    EOF,
    ITEM,
    OPS,
    CallHeader,
    CallRequest,
    CodeOnCluster,
    FunctionRef,
    InstanceTarget,
    LogMessage,
    OutputLine,
    ResultParts,
    cancel_to_link,
    done_from_link,
    done_to_link,
    eof_frames,
    item_frames,
    log_frames,
    output_from_reply,
    output_to_reply,
    request_of,
    task_from_link,
    task_to_link,
)
from rh_core.plugin.interfaces import Outcome, Task

CODE = CodeOnCluster(root="/srv/code", version="v7", paths=("/srv/code", "/srv/code/src"), cwd="/srv/code/src",
                     module="pkg.mod", digest="ab" * 32)
REF = FunctionRef(module="pkg.mod", qualname="Model.run", path="/srv/code/src")
FULL_CALL = CallRequest(
    key="run-1", mode="call", fn_id="pkg.mod:run", n_fn=0, function_ref=REF, code=CODE, refs=("made-0", "made-1"),
    options={"timeout": 2.5, "stream_logs": True}, env="gpu", secrets=("aws",),
    instance=InstanceTarget(name="llm", id="abc123", method="generate"), caller="outer-9/3", stream=True, shm=True,
)


def over_json(data):
    """What a peer reads of ``data``: it travels as JSON."""
    return orjson.loads(orjson.dumps(data))


def test_a_call_request_with_every_field_comes_back_equal():
    assert CallRequest.from_wire(over_json(FULL_CALL.to_wire()), frame_count=1) == FULL_CALL


def test_a_map_request_and_a_create_request_come_back_equal():
    a_map = CallRequest(key="m-1", mode="map", fn_id="pickled:1", n_fn=1, chunks=(2, 1, 0))
    assert CallRequest.from_wire(over_json(a_map.to_wire()), frame_count=4) == a_map
    create = CallRequest(key="c-1", mode="create", fn_id="pkg.mod:Model", function_ref=REF,
                         instance=InstanceTarget(name="llm", id="abc", max_concurrency=4, class_name="pkg.mod.Model"))
    assert CallRequest.from_wire(over_json(create.to_wire()), frame_count=1) == create


def test_a_plain_call_envelope_holds_only_what_it_needs():
    plain = CallRequest(key="k", mode="call", fn_id="f")
    assert plain.to_wire() == {"key": "k", "mode": "call", "fn_id": "f", "n_fn": 0, "function_ref": None,
                               "code": None, "refs": [], "options": {}}


def test_the_call_an_endpoint_serves_keeps_only_its_fields_and_is_checked_as_a_call():
    served = FULL_CALL.served_wire()
    assert set(served) == CallRequest.SERVED_FIELDS & set(FULL_CALL.to_wire())
    again = CallRequest.served(over_json(served), "predict", frame_count=1)
    assert (again.key, again.mode, again.function_ref, again.code) == ("predict", "call", REF, CODE)
    with pytest.raises(ProtocolError, match="unknown field 'refs'"):
        CallRequest.served({**served, "refs": ["x"]}, "predict", frame_count=1)


def test_the_header_a_worker_reads_over_its_link_equals_the_servers():
    header = CallHeader.of(FULL_CALL, shm_prefix="/rh-1-")
    task = Task(key="run-1", header=header, function=b"", arguments=[b"a" * 10, b"b" * (1 << 17)],
                refs={"made-0": Outcome(status="ok", frames=[b"x"])}, variables={"AWS_KEY": "k"})
    server_end, worker_end = socket.socketpair()
    server, worker = Link(server_end.detach()), Link(worker_end.detach())  # each Link owns its descriptor
    try:
        server.send(task_to_link(task, as_frame))
        arrived = task_from_link(worker.receive())  # a Link refuses any class: the header travels as plain data
        assert arrived.header == header and arrived.header.shm_prefix == "/rh-1-"
        assert (arrived.key, arrived.variables, [bytes(f) for f in arrived.arguments]) == (
            "run-1", {"AWS_KEY": "k"}, [b"a" * 10, b"b" * (1 << 17)])
        assert [bytes(f) for f in arrived.refs["made-0"].frames] == [b"x"]
        worker.send(done_to_link("run-1", Outcome(status="err", frames=[b"e"], logged=True), as_frame))
        key, outcome = done_from_link(server.receive())
        assert (key, outcome.status, outcome.logged, outcome.frames) == ("run-1", "err", True, [b"e"])
        printed = (OutputLine("stdout", b"one\ntwo\n"), OutputLine("stderr", b"three", item=4))
        worker.send(done_to_link("run-2", Outcome(status="ok", frames=[b"r"], output=printed), as_frame))
        assert done_from_link(server.receive())[1].output == printed  # the link carries output as plain data
        server.send(cancel_to_link("run-1"))
        assert worker.receive() == ("cancel", "run-1")
    finally:
        server.close()
        worker.close()


def test_result_parts_split_the_frames_of_each_outcome():
    outcomes = [Outcome(status="ok", frames=[b"1", b"2"]), Outcome(status="err", frames=[b"3"]),
                Outcome(status="stale", frames=[])]
    parts = ResultParts.from_wire(over_json(ResultParts.of(outcomes).to_wire()), frame_count=3)
    assert list(parts.split([b"1", b"2", b"3"])) == [("ok", [b"1", b"2"]), ("err", [b"3"]), ("stale", [])]


@pytest.mark.parametrize("parts", [[["ok", 1], ["ok", 1]], [["maybe", 3]], [["ok", -1], ["ok", 4]], "ok", None])
def test_result_parts_that_do_not_match_the_frames_are_refused(parts):
    with pytest.raises(ProtocolError, match="'parts' must be"):
        ResultParts.from_wire({"parts": parts}, frame_count=3)


def test_log_lines_items_and_the_end_marker_come_back_as_sent():
    line = LogMessage.from_wire(log_frames("run-1", OutputLine("stderr", "héllo\n".encode())))
    assert (line.key, line.stream, line.line()) == ("run-1", b"stderr", OutputLine("stderr", "héllo\n".encode()))
    of_an_item = LogMessage.from_wire(log_frames("run-1/2", OutputLine("stdout", b"x\n", item=7)))
    assert of_an_item.line() == OutputLine("stdout", b"x\n", item=7)
    item = LogMessage.from_wire(item_frames("run-1", [b"pickle", b"buffer"]))
    assert (item.stream, list(item.parts)) == (ITEM, [b"pickle", b"buffer"])
    assert LogMessage.from_wire(eof_frames("run-1")).stream == EOF
    with pytest.raises(ProtocolError, match="malformed log message"):
        LogMessage.from_wire([b"run-1"])


def test_output_travels_ahead_of_the_results_frames_with_each_map_chunk_counted():
    chunks = [Outcome(status="ok", frames=[b"r0"], output=(OutputLine("stdout", b"a\n", item=0),)),
              Outcome(status="ok", frames=[b"r1"], output=(OutputLine("stderr", b"b\n", item=1),))]
    fields, texts = output_to_reply(chunks)
    lines, rest = output_from_reply(orjson.loads(orjson.dumps(fields)), [*texts, b"r0", b"r1"])
    assert lines == [OutputLine("stdout", b"a\n", 0, 0), OutputLine("stderr", b"b\n", 1, 1)]
    assert rest == [b"r0", b"r1"]
    plain, _ = output_to_reply([Outcome(status="ok", frames=[], output=(OutputLine("stdout", b"c\n"),))])
    assert plain == [{"stream": "stdout"}]  # a call, not a map: no chunk or item to name


@pytest.mark.parametrize("fields", [[{"stream": 3}], [{"stream": "stdout", "item": -1}], {"stream": "stdout"},
                                    [{"stream": "stdout"}] * 3])
def test_output_fields_that_are_not_lines_are_refused(fields):
    with pytest.raises(ProtocolError, match="malformed"):
        output_from_reply(fields, [b"x", b"y"])


OP_EXAMPLES = {
    "ping": {"python": "3.11"}, "get": {"keys": ["a", "b"], "timeout": 1.5}, "put": {"key": "weights"},
    "status": {"keys": ["a"]}, "release": {"keys": ["a"]}, "cancel": {"key": "a"}, "logs": {"key": "a", "follow": True},
    "release_instance": {"name": "llm", "instance_id": "abc"}, "install": {"env": "gpu", "steps": [{"kind": "pip"}]},
    "delete_secrets": {"names": ["aws"]}, "serve": {"name": "predict", "public": True, "call": {"fn_id": "f"}},
    "unserve": {"name": "predict"}, "run_app": {"app": {"name": "ui"}}, "remove_app": {"name": "ui"},
    "app_logs": {"name": "ui"}, "http_token": {"rotate": True},
    "cancel_all": {}, "instances": {}, "runs": {}, "shutdown": {}, "secrets": {}, "sync_secrets": {}, "endpoints": {},
    "apps": {},
}


def test_every_operation_has_an_example_here():
    assert set(OP_EXAMPLES) == set(OPS)


@pytest.mark.parametrize("op", sorted(OP_EXAMPLES))
def test_each_operation_comes_back_as_sent(op):
    request = request_of(op, {"id": 3, "op": op, "auth": "s", **OP_EXAMPLES[op]})
    sent = over_json(request.to_wire())
    assert {field: sent[field] for field in OP_EXAMPLES[op]} == OP_EXAMPLES[op]
    assert request_of(op, sent) == request


@pytest.mark.parametrize("op", sorted(OP_EXAMPLES))
def test_each_operation_refuses_a_field_it_does_not_know(op):
    with pytest.raises(ProtocolError, match=f"malformed {op} request: unknown field 'sneaky'"):
        request_of(op, {**OP_EXAMPLES[op], "sneaky": 1})


# (operation, field, a value of the wrong type, an oversize or disallowed value)
OP_FIELDS = [
    ("get", "keys", "a", ["../etc"]), ("get", "timeout", "soon", 1e12), ("status", "keys", {"a": 1}, ["x" * 129]),
    ("release", "keys", None, ["a/b"]), ("cancel", "key", 3, "x" * 129), ("logs", "key", ["a"], "a b"),
    ("logs", "follow", "yes", 1), ("put", "key", 3, "x" * 300), ("release_instance", "name", 7, "x" * 300),
    ("install", "steps", "pip", ["not an object"]), ("install", "env", 1, "e" * 300),
    ("delete_secrets", "names", "aws", ["x" * 300]), ("serve", "call", "f", ["f"]), ("serve", "public", "no", 0),
    ("unserve", "name", 1, "x" * 300), ("run_app", "app", "ui", ["ui"]), ("http_token", "rotate", "yes", None),
]


@pytest.mark.parametrize(("op", "field", "wrong_type", "disallowed"), OP_FIELDS)
def test_each_operation_refuses_a_field_of_the_wrong_type_or_size_naming_it(op, field, wrong_type, disallowed):
    for value in (wrong_type, disallowed):
        if field == "rotate" and value is None:
            continue  # null is "not given" for an optional field
        with pytest.raises(ProtocolError, match=f"malformed {op} request: '{field}'"):
            request_of(op, {**OP_EXAMPLES[op], field: value})


def test_an_operation_the_server_does_not_have_is_refused():
    with pytest.raises(ProtocolError, match="unknown operation 'format_disk'"):
        request_of("format_disk", {})


# (field, a value of the wrong type, an oversize or disallowed value) of a call request
CALL_FIELDS = [
    ("key", 7, "k" * 129), ("mode", ["call"], "exec"), ("fn_id", 1, "f" * 5000), ("n_fn", "1", 2),
    ("refs", "a", ["../a"]), ("options", ["timeout"], {"timeout": -1}), ("env", 3, "e" * 300),
    ("secrets", "aws", ["s" * 300]), ("caller", 5, "no spaces allowed"), ("stream", "yes", 1), ("shm", "no", 0),
    ("chunks", "3", [1, 1]), ("function_ref", "pkg.mod:f", {"module": "m"}), ("code", "/srv", {"root": "/srv"}),
    ("instance", "llm", {"name": "../x", "id": "1", "method": "m"}),
]


@pytest.mark.parametrize(("field", "wrong_type", "disallowed"), CALL_FIELDS)
def test_a_call_request_refuses_a_field_of_the_wrong_type_or_size_naming_it(field, wrong_type, disallowed):
    good = FULL_CALL.to_wire()
    for value in (wrong_type, disallowed):
        with pytest.raises(ProtocolError, match=f"malformed call request.*'{field}'|malformed call request's {field}"):
            CallRequest.from_wire({**good, field: value}, frame_count=1)


def test_a_call_request_refuses_a_field_it_does_not_know_and_names_it():
    with pytest.raises(ProtocolError, match="malformed call request: unknown field 'run_as_root'"):
        CallRequest.from_wire({**FULL_CALL.to_wire(), "run_as_root": True}, frame_count=1)
    with pytest.raises(ProtocolError, match="call request's options: unknown field 'nice'"):
        CallRequest.from_wire({**FULL_CALL.to_wire(), "options": {"nice": -20}}, frame_count=1)
    with pytest.raises(ProtocolError, match="call request's function_ref: unknown field 'shell'"):
        CallRequest.from_wire({**FULL_CALL.to_wire(), "function_ref": {**REF.to_wire(), "shell": "rm"}}, frame_count=1)


def test_a_huge_hostile_value_is_not_echoed_whole_in_the_error():
    with pytest.raises(ProtocolError) as refused:
        CallRequest.from_wire({**FULL_CALL.to_wire(), "env": "x" * 1_000_000}, frame_count=1)
    assert "'env'" in str(refused.value) and len(str(refused.value)) < 400


def test_a_map_whose_chunks_do_not_add_up_to_its_frames_is_refused():
    a_map = CallRequest(key="m-1", mode="map", fn_id="f", chunks=(2, 2)).to_wire()
    with pytest.raises(ProtocolError, match="'chunks' must be the frame counts"):
        CallRequest.from_wire(a_map, frame_count=3)
    with pytest.raises(ProtocolError, match="'chunks' must be absent"):
        CallRequest.from_wire({**a_map, "mode": "call"}, frame_count=4)


def test_an_instance_field_must_fit_its_mode():
    create = CallRequest(key="c", mode="create", fn_id="f",
                         instance=InstanceTarget(name="llm", id="1", max_concurrency=2)).to_wire()
    with pytest.raises(ProtocolError, match="instance: 'method' must be absent"):
        CallRequest.from_wire({**create, "instance": {**create["instance"], "method": "m"}}, frame_count=0)
    with pytest.raises(ProtocolError, match="instance: 'max_concurrency' must be a positive integer"):
        CallRequest.from_wire({**create, "instance": {**create["instance"], "max_concurrency": True}}, frame_count=0)
    with pytest.raises(ProtocolError, match="instance: 'method' must be a non-empty string"):
        CallRequest.from_wire({**create, "mode": "call", "instance": {"name": "llm", "id": "1"}}, frame_count=0)
    with pytest.raises(ProtocolError, match="'instance' must be an object|instance: it must be an object"):
        CallRequest.from_wire({**create, "instance": None}, frame_count=0)
