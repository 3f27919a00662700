"""A live site declared dead, whose late reply then crashed the site (issue 14): the
SuperLink refuses a reply to a message it no longer awaits with a clear status, its
object store survives a deletion racing with a registration (SQLite's "FOREIGN KEY
constraint failed"), and the site logs a refused reply and keeps running."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from flwr.app import Message, RecordDict
from flwr.proto.message_pb2 import ObjectTree
from flwr.server.superlink.fleet.grpc_rere.fleet_servicer import FleetServicer
from flwr.server.superlink.linkstate.sqlite_linkstate import SqliteLinkState
from flwr.supercore.object_store import sqlite_object_store
from flwr.supercore.object_store.sqlite_object_store import SqliteObjectStore
from flwr.supernode import start_client_internal

from fedcare import flower_compat

# ---------------------------------------------------------------- the SuperLink's side


class Aborted(Exception):
    pass


class FakeContext:
    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


class FakeServicer:
    def __init__(self, state: Any) -> None:
        self.state_factory = type("Factory", (), {"state": lambda _self: state})()


def _push_request(reply_to: str) -> Any:
    from flwr.proto.fleet_pb2 import PushMessagesRequest
    from flwr.proto.message_pb2 import Message as MessageProto

    proto = MessageProto()
    proto.metadata.reply_to_message_id = reply_to
    proto.metadata.src_node_id = 7
    return PushMessagesRequest(messages_list=[proto])


@pytest.fixture()
def fixed_superlink(monkeypatch: pytest.MonkeyPatch) -> None:
    """:func:`flower_compat.fix_superlink` installed for one test, undone after it."""
    from flwr.server.superlink.fleet.message_handler import message_handler
    from flwr.server.superlink.linkstate import LinkStateFactory
    from flwr.server.superlink.serverappio.serverappio_servicer import ServerAppIoServicer
    from flwr.supercore.object_store import ObjectStoreFactory

    for owner, name in ((FleetServicer, "PushMessages"), (SqliteObjectStore, "preregister"),
                        (ServerAppIoServicer, "PushMessages"),
                        (message_handler, "push_messages"), (LinkStateFactory, "state"),
                        (ObjectStoreFactory, "store")):
        monkeypatch.setattr(owner, name, getattr(owner, name))
    flower_compat.fix_superlink()


def test_a_reply_to_a_message_the_superlink_no_longer_holds_is_refused_clearly(
        fixed_superlink: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = SqliteLinkState(str(tmp_path / "state.db"))
    state.initialize()  # holds no message: the ServerApp was told the node is gone
    monkeypatch.setattr(FleetServicer, "__init__", lambda self: None)
    servicer = FleetServicer()
    servicer.state_factory = FakeServicer(state).state_factory  # type: ignore[attr-defined]

    with pytest.raises(Aborted) as refused:
        FleetServicer.PushMessages(servicer, _push_request("gone-1"), FakeContext())

    code, details = refused.value.args
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.startswith("reply refused by the SuperLink: message gone-1 it answers is "
                              "no longer awaited")


def test_a_reply_to_a_message_still_awaited_goes_through() -> None:
    awaited = type("State", (), {"get_valid_message_ins": lambda _s, mid: {"id": mid}})()
    calls: list[str] = []
    push = flower_compat._refusing_late_replies(
        lambda servicer, request, context: calls.append("pushed") or "ok")

    assert push(FakeServicer(awaited), _push_request("m-1"), FakeContext()) == "ok"
    assert calls == ["pushed"]


def _oid(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _tree(root: str, *children: str) -> ObjectTree:
    return ObjectTree(object_id=_oid(root),
                      children=[ObjectTree(object_id=_oid(c)) for c in children])


def _deleting_after(child: str, other_store: SqliteObjectStore, other_message: str) -> Any:
    """Flower's tree walk, with ``other_message`` deleted (by another connection, as the
    ServerApp confirming another site's reply does) right after ``child`` is registered:
    the interleaving that broke the foreign key."""
    walk = sqlite_object_store.iterate_object_tree

    def walk_and_delete(tree: ObjectTree) -> Iterator[ObjectTree]:
        deleted = False
        for node in walk(tree):
            yield node
            if node.object_id == _oid(child) and not deleted:
                other_store.delete(_oid(other_message))
                deleted = True

    return walk_and_delete


def _stores(tmp_path: Path) -> tuple[SqliteObjectStore, SqliteObjectStore]:
    path = str(tmp_path / "objects.db")
    one, two = SqliteObjectStore(path), SqliteObjectStore(path)
    one.initialize()
    two.initialize()
    return one, two


def test_unfixed_flower_store_breaks_its_foreign_key_in_the_race(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, other = _stores(tmp_path)
    other.preregister(1, _tree("other-site-reply", "shared-status"))  # shared child exists
    monkeypatch.setattr(sqlite_object_store, "iterate_object_tree",
                        _deleting_after("shared-status", other, "other-site-reply"))

    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY constraint failed"):
        store.preregister(1, _tree("late-reply", "shared-status"))


def test_registering_a_reply_survives_the_deletion_of_an_object_it_shares(
        fixed_superlink: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, other = _stores(tmp_path)
    other.preregister(1, _tree("other-site-reply", "shared-status"))
    monkeypatch.setattr(sqlite_object_store, "iterate_object_tree",
                        _deleting_after("shared-status", other, "other-site-reply"))

    to_push = store.preregister(1, _tree("late-reply", "shared-status"))

    assert sorted(to_push) == sorted([_oid("late-reply"), _oid("shared-status")])
    assert store.get_object_tree(_oid("late-reply")) == _tree("late-reply", "shared-status")
    assert store.get(_oid("other-site-reply")) is None  # the other deletion went through


# ---------------------------------------------------------------- the site's side


class Refused(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.FAILED_PRECONDITION

    def details(self) -> str:
        return "reply refused by the SuperLink: message m-1 it answers is no longer awaited"


class OneReply:
    """Flower's NodeState and ObjectStore, as far as ``_push_messages`` uses them."""

    def __init__(self, reply: Message) -> None:
        self.replies = [reply]
        self.deleted: list[Any] = []

    def get_messages(self, is_reply: bool) -> list[Message]:
        return list(self.replies)

    def delete_messages(self, message_ids: list[str]) -> None:
        self.deleted.append(message_ids)
        self.replies = []

    def get_object_tree(self, message_id: str) -> ObjectTree:
        return ObjectTree(object_id=message_id)

    def delete(self, object_id: str) -> None:
        self.deleted.append(object_id)


def _refused_send(message: Message, tree: ObjectTree) -> set[str]:
    raise Refused()


def _late_reply() -> Message:
    instruction = Message(RecordDict(), dst_node_id=7, message_type="train", group_id="1")
    instruction.metadata.__dict__["_message_id"] = "m-1"
    return Message(RecordDict(), reply_to=instruction)


def test_unwrapped_flower_lets_a_refused_reply_end_the_site() -> None:
    held = OneReply(_late_reply())

    with pytest.raises(grpc.RpcError):
        start_client_internal._push_messages(state=held, object_store=held,
                                             send=_refused_send, push_object=print)


def test_a_site_whose_reply_is_refused_logs_it_drops_it_and_keeps_running(
        caplog: pytest.LogCaptureFixture) -> None:
    held = OneReply(_late_reply())
    push = flower_compat._surviving_refused_replies(start_client_internal._push_messages)

    with caplog.at_level(logging.WARNING, logger=flower_compat.__name__):
        push(state=held, object_store=held, send=_refused_send, push_object=print)

    assert held.replies == [] and held.deleted  # Flower's clean-up ran
    warning = caplog.records[-1].getMessage()
    assert "reply was not delivered: the SuperLink answered FAILED_PRECONDITION" in warning
    assert "no longer awaited" in warning and "keeps running" in warning


def test_other_failures_of_the_push_still_surface() -> None:
    def broken(**_: Any) -> None:
        raise RuntimeError("a bug, not a refusal")

    with pytest.raises(RuntimeError, match="a bug"):
        flower_compat._surviving_refused_replies(broken)()


# ------------------------------------- a message whose run ends while it is received


RUN_ID = 41


def _instruction() -> tuple[Message, ObjectTree]:
    from flwr.app import ConfigRecord
    from flwr.common.inflatable import get_object_tree

    message = Message(RecordDict({"request": ConfigRecord({"run-name": "first"})}),
                      dst_node_id=7, message_type="query.preflight", group_id="preflight")
    message.metadata.__dict__["_run_id"] = RUN_ID
    message.metadata.__dict__["_message_id"] = message.object_id
    return message, get_object_tree(message)


def _node_state() -> tuple[Any, Any]:
    from flwr.common import Context
    from flwr.common.typing import Run
    from flwr.supercore.object_store.in_memory_object_store import InMemoryObjectStore
    from flwr.supernode.nodestate.in_memory_nodestate import InMemoryNodeState

    state = InMemoryNodeState()
    state.store_run(Run.create_empty(RUN_ID))  # the site took part in this run before
    state.store_context(Context(run_id=RUN_ID, node_id=7, node_config={},
                                state=RecordDict(), run_config={}))
    return state, InMemoryObjectStore()


def _pull_while_the_run_ends(pull: Any, state: Any, store: Any) -> int | None:
    from flwr.common.typing import RunNotRunningException

    def run_ended(run_id: int, object_id: str) -> bytes:  # the SuperLink: PERMISSION_DENIED
        raise RunNotRunningException

    received = _instruction()
    # Flower's pull_objects swallows the object pulls' errors (thread pool); the
    # confirmation that follows is refused the same way and ends the receipt
    return pull(state=state, ffs=None, object_store=store, node_config={},
                receive=lambda: received, get_run=None, get_fab=None,
                pull_object=run_ended, confirm_message_received=run_ended)


def test_unfixed_flower_keeps_a_half_received_message_for_the_worker() -> None:
    state, store = _node_state()

    assert _pull_while_the_run_ends(start_client_internal._pull_and_store_message,
                                    state, store) is None

    assert list(state.get_run_ids_with_pending_messages()) == [RUN_ID]  # served, never whole


def test_a_message_whose_run_ends_while_it_arrives_is_forgotten(
        caplog: pytest.LogCaptureFixture) -> None:
    state, store = _node_state()
    pull = flower_compat._forgetting_half_received(start_client_internal._pull_and_store_message)

    with caplog.at_level(logging.WARNING, logger=flower_compat.__name__):
        assert _pull_while_the_run_ends(pull, state, store) is None

    assert list(state.get_run_ids_with_pending_messages()) == []
    message, _ = _instruction()
    assert store.get(message.object_id) is None  # its preregistered objects are gone too
    assert "arrived only in part" in caplog.records[-1].getMessage()


def test_the_site_worker_outlives_a_message_it_cannot_serve(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def objects_never_came(*_: Any) -> None:
        raise TimeoutError("object pull gave up")

    monkeypatch.setattr(flower_compat, "serve_one_message", objects_never_came)

    with caplog.at_level(logging.ERROR, logger=flower_compat.__name__):
        flower_compat._serve_or_log("127.0.0.1:1", "token", app=None, verdicts=None)  # type: ignore[arg-type]

    assert "could not serve a message; it goes on" in caplog.records[-1].getMessage()


def test_a_message_the_worker_abandons_ends_the_supernodes_wait_for_its_reply(
        caplog: pytest.LogCaptureFixture) -> None:
    state, _ = _node_state()
    state.store_message(_instruction()[0])  # pulled; the worker failed on it: no reply
    abandoned = flower_compat.Abandoned()
    abandoned.add(RUN_ID)
    pushed: list[Any] = []
    push = flower_compat._surviving_refused_replies(lambda **kw: pushed.append(kw), abandoned)

    with caplog.at_level(logging.WARNING, logger=flower_compat.__name__):
        push(state=state, object_store=None, send=None, push_object=None)

    assert pushed == []  # Flower's endless wait is skipped
    assert "could not answer the message" in caplog.records[-1].getMessage()


def test_giving_up_on_another_runs_message_does_not_end_the_wait() -> None:
    abandoned = flower_compat.Abandoned()
    abandoned.add(RUN_ID + 1)  # e.g. a half-received message of the run before, forgotten

    assert not abandoned.take({RUN_ID})
    assert not abandoned.take({RUN_ID + 1})  # a stale note is not kept for later


def test_a_reply_in_the_state_is_pushed_as_flower_does() -> None:
    state, _ = _node_state()
    state.store_message(_late_reply_with_id())
    pushed: list[Any] = []
    push = flower_compat._surviving_refused_replies(lambda **kw: pushed.append(kw),
                                                    flower_compat.Abandoned())

    push(state=state, object_store=None, send=None, push_object=None)

    assert len(pushed) == 1


def _late_reply_with_id() -> Message:
    reply = _late_reply()
    reply.metadata.__dict__["_message_id"] = reply.object_id
    return reply


def test_a_message_whose_contents_never_came_is_skipped_with_a_warning(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from flwr.common.inflatable_utils import ObjectIdNotPreregisteredError

    def forgotten(*_: Any) -> None:  # the SuperNode dropped the half-received message
        raise ObjectIdNotPreregisteredError("abc")

    monkeypatch.setattr(flower_compat, "serve_one_message", forgotten)
    abandoned = flower_compat.Abandoned()

    with caplog.at_level(logging.WARNING, logger=flower_compat.__name__):
        flower_compat._serve_or_log("127.0.0.1:1", "token", None, None,  # type: ignore[arg-type]
                                    abandoned, RUN_ID)

    record = caplog.records[-1]
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert "skipped a message whose contents never arrived" in record.getMessage()
    assert abandoned.take({RUN_ID})


def test_the_superlinks_sqlite_state_is_opened_once_per_thread(
        fixed_superlink: None, tmp_path: Path) -> None:
    import threading

    from flwr.server.superlink.linkstate import LinkStateFactory
    from flwr.supercore.object_store import ObjectStoreFactory

    states = LinkStateFactory(str(tmp_path / "s.db"))
    stores = ObjectStoreFactory(str(tmp_path / "s.db"))
    here = (states.state(), stores.store())
    node = here[0].create_node(owner_aid="a", public_key=b"k", heartbeat_interval=30)
    seen: list[Any] = []

    def other_thread() -> None:
        state = states.state()
        seen.extend([state, stores.store(),
                     {info.node_id for info in state.get_node_info()}])

    worker = threading.Thread(target=other_thread)
    worker.start()
    worker.join()

    assert states.state() is here[0] and stores.store() is here[1]  # no new connection
    assert seen[0] is not here[0] and seen[1] is not here[1]  # sqlite3: one per thread
    assert node in seen[2]  # what one thread's connection wrote, another's reads
