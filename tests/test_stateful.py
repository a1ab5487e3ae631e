"""A hypothesis state machine against one real server process: three users log in, upload,
update, delete, and buy each other's images, in orders hypothesis chooses. After every step the
invariants are checked on every read path, for every user:

* stock is never negative, and equals what the model expects;
* a private image is never visible to anyone but its owner (browse, search, GetImage,
  GetImages, tag counts);
* a deleted image is never listed or fetched.

Each example tags its images with a fresh tag and word, so the checks see only its own images
while the server keeps everything the earlier examples made.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from protocol.catalog import (
    Browse,
    CartLine,
    Checkout,
    DeleteImage,
    GetImage,
    GetImages,
    ImageDetails,
    Images,
    ImageUpdated,
    ListingOptions,
    ListTags,
    OrderPlaced,
    TagList,
    TextSearch,
    UpdateImage,
    Uploaded,
    UploadImage,
)
from protocol.errors import ErrorCode, VitrineError
from protocol.messages import Login, Session
from shell.connection import ServerConnection
from tests.servers import ServerProcess
from tests.test_images_server import jpeg

USERS = ("ann", "ben", "cat")
PASSWORD = "correct horse battery"
_examples = itertools.count()
_seeds = itertools.count(700_000)


@dataclass
class Item:
    owner: str
    private: bool
    quantity: int
    price: int
    tags: set[str] = field(default_factory=set)
    deleted: bool = False

    def visible_to(self, user: str) -> bool:
        return not self.deleted and (not self.private or user == self.owner)


class Marketplace(RuleBasedStateMachine):
    """Set by the test before running: the server and one logged-in connection per user."""

    connections: dict[str, ServerConnection] = {}

    images = Bundle("images")

    def __init__(self) -> None:
        super().__init__()
        number = next(_examples)
        self.tag = f"sm{number}x"
        self.word = f"zqsm{number}word"
        self.extra_tags = [f"{self.tag}{suffix}" for suffix in ("red", "blue")]
        self.model: dict[int, Item] = {}

    # --- rules -----------------------------------------------------------------------------------

    @rule(
        target=images,
        user=st.sampled_from(USERS),
        private=st.booleans(),
        quantity=st.integers(0, 5),
        price=st.integers(0, 10_000),
    )
    def upload(self, user: str, private: bool, quantity: int, price: int) -> int:
        up = self.connections[user].call(
            UploadImage(
                id=0,
                filename="p.jpg",
                data=jpeg(next(_seeds), (32, 24)),
                title=f"item {self.word}",
                tags=[self.tag],
                price_cents=price,
                quantity=quantity,
                private=private,
            ),
            Uploaded,
        )
        assert up.created
        self.model[up.image_id] = Item(user, private, quantity, price, {self.tag})
        return up.image_id

    @rule(user=st.sampled_from(USERS))
    def login_again(self, user: str) -> None:
        session = self.connections[user].call(Login(id=0, name=user, password=PASSWORD), Session)
        assert session.name == user

    @rule(
        user=st.sampled_from(USERS),
        image=images,
        quantity=st.none() | st.integers(0, 5),
        price=st.none() | st.integers(0, 10_000),
        private=st.none() | st.booleans(),
        add=st.sampled_from([0, 1]),
    )
    def update(
        self,
        user: str,
        image: int,
        quantity: int | None,
        price: int | None,
        private: bool | None,
        add: int,
    ) -> None:
        item = self.model[image]
        extra = self.extra_tags[add]
        request = UpdateImage(
            id=0,
            image_id=image,
            quantity=quantity,
            price_cents=price,
            private=private,
            add_tags=[extra],
        )
        expected = self._write_outcome(user, item)
        if expected is not None:
            self._expect_error(user, request, expected)
            return
        changed = self.connections[user].call(request, ImageUpdated).image
        if quantity is not None:
            item.quantity = quantity
        if price is not None:
            item.price = price
        if private is not None:
            item.private = private
        item.tags.add(extra)
        assert (changed.quantity, changed.price_cents) == (item.quantity, item.price)

    @rule(user=st.sampled_from(USERS), image=images)
    def delete(self, user: str, image: int) -> None:
        item = self.model[image]
        expected = self._write_outcome(user, item)
        if expected is not None:
            self._expect_error(user, DeleteImage(id=0, image_id=image), expected)
            return
        self.connections[user].call(DeleteImage(id=0, image_id=image))
        item.deleted = True

    @rule(user=st.sampled_from(USERS), image=images, quantity=st.integers(1, 4))
    def checkout(self, user: str, image: int, quantity: int) -> None:
        item = self.model[image]
        buyable = item.visible_to(user) and item.owner != user and item.quantity >= quantity
        request = Checkout(id=0, lines=[CartLine(image_id=image, quantity=quantity)])
        if not buyable:
            with pytest.raises(VitrineError) as caught:
                self.connections[user].call(request)
            assert caught.value.code is not ErrorCode.INTERNAL
            return
        placed = self.connections[user].call(request, OrderPlaced).order
        assert placed.total_cents == quantity * item.price
        item.quantity -= quantity

    # --- what the model expects ------------------------------------------------------------------

    @staticmethod
    def _write_outcome(user: str, item: Item) -> ErrorCode | None:
        if not item.visible_to(user):
            return ErrorCode.NOT_FOUND  # a hidden or deleted image reads as missing
        if item.owner != user:
            return ErrorCode.FORBIDDEN
        return None

    def _expect_error(self, user: str, request: object, code: ErrorCode) -> None:
        with pytest.raises(VitrineError) as caught:
            self.connections[user].call(request)  # type: ignore[arg-type]
        assert caught.value.code is code, caught.value

    # --- invariants ------------------------------------------------------------------------------

    @invariant()
    def every_read_path_agrees_with_the_model(self) -> None:
        for user, conn in self.connections.items():
            visible = {i: item for i, item in self.model.items() if item.visible_to(user)}
            options = ListingOptions(limit=500, thumbnails=False)
            listed = [
                summary
                for frame in conn.stream(Browse(id=0, tags=[self.tag], options=options))
                for summary in frame.items
            ]
            assert {s.id for s in listed} == set(visible), (user, "browse")
            for summary in listed:
                assert summary.quantity >= 0
                assert summary.quantity == visible[summary.id].quantity
            if self.model:
                found = [
                    s.id
                    for frame in conn.stream(TextSearch(id=0, text=self.word, options=options))
                    for s in frame.items
                ]
                assert set(found) == set(visible), (user, "search")
                many = conn.call(GetImages(id=0, image_ids=list(self.model)), Images).items
                assert {s.id for s in many} == set(visible), (user, "GetImages")
                assert all(s.quantity >= 0 for s in many)
            for image_id in self.model:
                try:
                    conn.call(GetImage(id=0, image_id=image_id), ImageDetails)
                    assert image_id in visible, (user, "GetImage", image_id)
                except VitrineError as exc:
                    assert exc.code is ErrorCode.NOT_FOUND and image_id not in visible
            counts = {t.name: t.count for t in conn.call(ListTags(id=0), TagList).tags}
            for tag in (self.tag, *self.extra_tags):
                expected = sum(tag in item.tags for item in visible.values())
                assert counts.get(tag, 0) == expected, (user, "tags", tag)


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServerConnection]]:
    server = ServerProcess(tmp_path_factory.mktemp("stateful")).start()
    home = tmp_path_factory.mktemp("stateful-clients")
    # The first account is the admin; keep it out of the game so owners' rights are plain.
    server.user_connection(home / "root", "root", PASSWORD).close()
    connections = {
        name: server.user_connection(Path(home / name), name, PASSWORD) for name in USERS
    }
    yield connections
    for conn in connections.values():
        conn.close()
    server.stop()


def test_marketplace_invariants_hold_at_every_step(market: dict[str, ServerConnection]) -> None:
    Marketplace.connections = market
    run_state_machine_as_test(
        Marketplace,
        settings=settings(
            max_examples=10,
            stateful_step_count=15,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        ),
    )
