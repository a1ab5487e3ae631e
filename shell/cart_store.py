"""The local cart: one JSON file per server and user in the client's data directory.

The cart lives on the buyer's machine (as in the shop system Vitrine replaces), so it must
survive crashes, restarts of either side, and two shells of the same user at once:

* **Where.** `<data_dir>/carts/<server id>/<user>.json`. The server id is the random id the
  server sends in `Welcome`, made with its data, not its address: a new server at the same
  address (fresh data, so image #1 is another product) gets a new cart, and one server reached
  as `localhost:7878` and `127.0.0.1:7878` keeps one cart. A server too old to send an id is
  keyed by its address; a cart kept under the address before ids existed is taken over by the
  first server with an id found there. Names are percent-encoded, which keeps them
  filename-safe and distinct (`[::1]:7878` and `::1_7878` never share a file). Every folder
  made on the way is owner-only (0700), and `carts/` and the server's folder are made so again
  if found looser: their listing says which accounts are used on which server.
* **Atomic.** Each save writes a temporary file in the same directory, fsyncs it, renames it
  over the cart with `os.replace` and fsyncs the directory: a reader sees the old cart or the
  new one, never half of either, even after a power cut.
* **One writer at a time.** `CartStore.edit()` holds an exclusive `flock` on a side lock file
  across read-modify-write, so two shells adding at once both keep their lines. A checkout
  holds it while the server places the order; another shell of the same buyer says that it
  waits, and gives up after its `--timeout` (a checkout in a suspended shell would otherwise
  hold it for ever).
* **Corruption is not a crash.** A file that is not a valid cart is renamed
  `<user>.json.corrupt-<UTC timestamp>` (kept for a person to look at), the shell says so, and
  the cart starts empty. A cart in a newer format (a higher `version`) is not damaged: it is
  left untouched and cart commands refuse to use it, so the newer client still finds it. Only
  a regular file is read: a FIFO, device or socket at the cart's path is refused unopened, as
  reading a FIFO would wait for ever.

A line remembers the unit price the buyer saw when adding it, so `view_cart` can warn when the
price changed and a scripted `checkout --yes` is never charged a price nobody saw.

**A checkout in flight is written down.** Before a checkout sends its order, the cart file gets
the checkout's random key and the lines sent (`pending`), saved durably; the save that takes the
bought lines out (or records a refusal) drops it. A shell that dies in between (killed, the
terminal closed, the power cut) leaves it there, so the next checkout sends the same key and the
server answers with the order it placed, if it placed one, instead of buying again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

import msgspec

from protocol.limits import MAX_CENTS, MAX_LINE_QUANTITY, MAX_ORDER_LINES
from util.config import Setting, private_directory, tighten_directory
from util.files import file_kind, write_atomically

#: Seconds of waiting for the cart's lock before saying so; and between tries.
LOCK_NOTICE_AFTER_S = 0.5
LOCK_POLL_S = 0.05
FORMAT_VERSION = 1

#: The one sentence for a line past MAX_LINE_QUANTITY, whether the cart adds up to it or a
#: command is typed past it (shell.cart_commands).
LINE_LIMIT = f"At most {MAX_LINE_QUANTITY} units of one image fit on a line."


class CartError(Exception):
    """A cart operation that cannot be done, worded for the user."""


class NotInCart(CartError):
    def __init__(self, image_id: int) -> None:
        super().__init__(f"Image {image_id} is not in your cart; view_cart lists what is.")
        self.image_id = image_id


class CartItem(msgspec.Struct, kw_only=True):
    image_id: Annotated[int, msgspec.Meta(ge=1, le=2**53)]
    quantity: Annotated[int, msgspec.Meta(ge=1, le=MAX_LINE_QUANTITY)]
    #: The unit price the buyer saw when adding (or last updating) the line.
    price_cents: Annotated[int, msgspec.Meta(ge=0, le=MAX_CENTS)]
    title: str = ""
    added_at: float = 0.0


class PendingCheckout(msgspec.Struct, kw_only=True):
    """A checkout sent and not answered yet (as far as this file knows)."""

    key: Annotated[str, msgspec.Meta(min_length=16, max_length=64)]
    #: The lines as sent (price: the one expected), for a person reading the file: no code
    #: reads them back, since the server's answer to the key says what the order held.
    lines: Annotated[list[CartItem], msgspec.Meta(max_length=MAX_ORDER_LINES)] = []
    sent_at: float = 0.0


class CartFile(msgspec.Struct, kw_only=True):
    version: int = FORMAT_VERSION
    #: The address it was last used at, for a person looking at the file.
    server: str = ""
    server_id: str = ""
    user: str = ""
    lines: Annotated[list[CartItem], msgspec.Meta(max_length=MAX_ORDER_LINES)] = []
    pending: PendingCheckout | None = None


class _Version(msgspec.Struct):
    """Only a cart file's format version: read first, so that a newer format (whose other
    fields this version may not understand) is told apart from a damaged file."""

    version: int = FORMAT_VERSION


class Cart:
    """The lines of a cart, in the order they were first added; one line per image."""

    def __init__(
        self, lines: list[CartItem] | None = None, pending: PendingCheckout | None = None
    ) -> None:
        #: The checkout sent without an answer saved yet, if any.
        self.pending = pending
        self.lines: list[CartItem] = []
        for line in lines or []:
            found = self.find(line.image_id)
            if found is None:
                self.lines.append(line)
            else:  # a hand-merged file: keep one line with the sum
                found.quantity = min(MAX_LINE_QUANTITY, found.quantity + line.quantity)

    def __len__(self) -> int:
        return len(self.lines)

    def find(self, image_id: int) -> CartItem | None:
        return next((line for line in self.lines if line.image_id == image_id), None)

    def get(self, image_id: int) -> CartItem:
        line = self.find(image_id)
        if line is None:
            raise NotInCart(image_id)
        return line

    @property
    def units(self) -> int:
        return sum(line.quantity for line in self.lines)

    def add(self, image_id: int, quantity: int, price_cents: int, title: str) -> CartItem:
        """Add units (merged into the image's line); the price and title seen now replace the
        old ones, since the buyer has just seen them."""
        if quantity < 1:
            raise CartError(f"A quantity must be 1 or more, not {quantity}.")
        line = self.find(image_id)
        if line is None:
            if len(self.lines) >= MAX_ORDER_LINES:
                raise CartError(
                    f"A cart holds at most {MAX_ORDER_LINES} different images; check out or remove "
                    "some first."
                )
            line = CartItem(image_id=image_id, quantity=0, price_cents=price_cents)
            line.added_at = time.time()
            self.lines.append(line)
        total = line.quantity + quantity
        if total > MAX_LINE_QUANTITY:
            raise CartError(LINE_LIMIT)
        line.quantity, line.price_cents, line.title = total, price_cents, title
        return line

    def set_quantity(self, image_id: int, quantity: int) -> CartItem | None:
        """Set a line's quantity; 0 removes the line (and returns None)."""
        line = self.get(image_id)
        if quantity < 0:
            raise CartError(f"A quantity must be 1 or more, not {quantity} (0 removes the line).")
        if quantity == 0:
            self.lines.remove(line)
            return None
        if quantity > MAX_LINE_QUANTITY:
            raise CartError(LINE_LIMIT)
        line.quantity = quantity
        return line

    def remove(self, image_id: int) -> CartItem:
        line = self.get(image_id)
        self.lines.remove(line)
        return line

    def clear(self) -> int:
        count = len(self.lines)
        self.lines = []
        return count

    def take(self, bought: dict[int, int]) -> None:
        """Drop what an order bought: a line changed meanwhile by another shell keeps the rest."""
        for image_id, quantity in bought.items():
            line = self.find(image_id)
            if line is None:
                continue
            if line.quantity <= quantity:
                self.lines.remove(line)
            else:
                line.quantity -= quantity


def _safe_name(text: str) -> str:
    """Percent-encoding: only [A-Za-z0-9_.~-%] remain, and different inputs stay different."""
    name = quote(text, safe="")
    return name if name not in ("", ".", "..") else quote(name.replace(".", "%2E"), safe="%")


def cart_path(data_dir: Path, server_key: str, user: str) -> Path:
    return data_dir / "carts" / _safe_name(server_key) / f"{_safe_name(user)}.json"


#: The client's --data-dir when nothing says where it came from (see CartStore).
DATA_DIR_FLAG = Setting("--data-dir")


class CartStore:
    """The cart file of one user on one server: `server` is its address, `server_id` its own
    id (Welcome.server_id, "" when the server sends none)."""

    def __init__(
        self,
        data_dir: Path,
        server: str,
        user: str,
        notice: Callable[[str], None] = print,
        server_id: str = "",
        wait_s: float = 120.0,
        data_dir_setting: Setting = DATA_DIR_FLAG,
    ) -> None:
        self.server, self.user, self.server_id = server, user, server_id
        #: The data directory as the user gave it (a VITRINE_* variable or the flag), so that a
        #: folder that cannot be made is blamed on the setting that chose it.
        self.data_dir, self.data_dir_setting = data_dir, data_dir_setting
        #: How long to wait for another shell that holds the cart (its checkout, say).
        self.wait_s = wait_s
        self.path = cart_path(data_dir, server_id or server, user)
        self._carts = data_dir / "carts"
        #: Where this cart was kept before carts were keyed by the server's id.
        self._by_address = cart_path(data_dir, server, user) if server_id else None
        self.notice = notice

    def _prepare(self) -> None:
        try:
            private_directory(self.path.parent)
        except OSError as exc:
            setting = self.data_dir_setting
            raise CartError(
                f"Cannot create the cart folder {self.path.parent}: {exc.strerror or exc} (carts "
                f"are kept under {setting.given(self.data_dir)}; choose another {setting.either})."
            ) from None
        for folder in (self._carts, self.path.parent):  # as an older client left them
            tighten_directory(folder)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._prepare()
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise CartError(f"Cannot open {lock_path}: {exc.strerror or exc}.") from None
        try:
            self._wait_for_lock(fd)
            self._take_over_cart_kept_by_address()
            yield
        finally:
            os.close(fd)  # closing drops the lock

    def _wait_for_lock(self, fd: int) -> None:
        started = time.monotonic()
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            waited = time.monotonic() - started
            if waited >= self.wait_s:
                raise CartError(
                    f"Your cart is still in use by another shell of yours after {waited:.0f} s "
                    "(a checkout waiting for the server, or a shell stopped with Ctrl-Z); "
                    "nothing was changed. Try again once it is done."
                )
            if not told and waited >= LOCK_NOTICE_AFTER_S:
                self.notice(
                    "Waiting for your cart: another shell of yours is using it (a checkout "
                    "waiting for the server?)."
                )
                told = True
            time.sleep(LOCK_POLL_S)

    def _take_over_cart_kept_by_address(self) -> None:
        old = self._by_address
        if old is None or self.path.exists() or not old.exists():
            return
        try:
            os.replace(old, self.path)
        except OSError as exc:
            raise CartError(
                f"Cannot move the cart {old} to {self.path}: {exc.strerror or exc}."
            ) from None

    def _read(self) -> Cart:
        data = self._read_bytes()
        if data is None:
            return Cart()
        try:
            stored = msgspec.json.decode(data, type=CartFile)
        except msgspec.MsgspecError as exc:
            # A newer format may not decode as this one: its version alone tells it from damage.
            with contextlib.suppress(msgspec.MsgspecError):
                self._refuse_if_newer(msgspec.json.decode(data, type=_Version).version)
            self._move_aside(str(exc))
            return Cart()
        self._refuse_if_newer(stored.version)
        if stored.version != FORMAT_VERSION:
            self._move_aside(f"unknown cart format version {stored.version}")
            return Cart()
        return Cart(stored.lines, stored.pending)

    def _refuse_if_newer(self, version: int) -> None:
        """Not damage: a newer Vitrine wrote it, and moving it aside would make that newer
        client find its cart gone. Left exactly as it is; only cart commands refuse."""
        if version > FORMAT_VERSION:
            raise CartError(
                f"Your cart file {self.path} was written by a newer version of Vitrine (cart "
                f"format {version}; this one reads format {FORMAT_VERSION}). It was left as it "
                "is: use that newer version for your cart."
            )

    def _read_bytes(self) -> bytes | None:
        """The file's bytes (None when there is none). Only a regular file is opened: reading
        a FIFO put at the cart's path would wait for a writer for ever, and a device or socket
        is no cart. The type is checked before opening, and again on the descriptor (opened
        without blocking) in case something was swapped in between."""
        path = self.path
        try:
            kind = file_kind(os.stat(path).st_mode)
            if kind is None:
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                try:
                    kind = file_kind(os.fstat(fd).st_mode)
                    if kind is None:
                        with os.fdopen(fd, "rb", closefd=False) as handle:
                            return handle.read()
                finally:
                    os.close(fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CartError(f"Cannot read the cart {path}: {exc.strerror or exc}.") from None
        raise CartError(
            f"Cannot read the cart {path}: it is {kind}, not a regular file, so nothing was "
            "read from it. Move it away or delete it, and the cart starts empty."
        )

    def _move_aside(self, problem: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        number = 1
        while aside.exists():
            number += 1
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{number}")
        try:
            os.replace(self.path, aside)
        except OSError as exc:
            raise CartError(
                f"The cart file {self.path} is damaged ({problem:.200}) and cannot be moved "
                f"aside: {exc.strerror or exc}. Move or delete it by hand."
            ) from None
        self.notice(
            f"Your cart file was damaged ({problem:.200}); it was moved aside to {aside} and "
            "your cart starts empty."
        )

    def load(self) -> Cart:
        with self._locked():
            return self._read()

    @contextlib.contextmanager
    def edit(self) -> Iterator[Cart]:
        """Read, change and save under the lock; an exception inside leaves the file as it was."""
        with self._locked():
            cart = self._read()
            yield cart
            self._save(cart)

    def save_now(self, cart: Cart) -> None:
        """Save in the middle of `edit()` (whose lock is held): a checkout writes its key down
        before sending the order, so that dying while it waits cannot lose it."""
        self._save(cart)

    def _save(self, cart: Cart) -> None:
        data = msgspec.json.encode(
            CartFile(
                server=self.server,
                server_id=self.server_id,
                user=self.user,
                lines=cart.lines,
                pending=cart.pending,
            )
        )
        try:
            write_atomically(self.path, data)
        except OSError as exc:
            raise CartError(f"Cannot save the cart {self.path}: {exc.strerror or exc}.") from None
