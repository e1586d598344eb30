"""What the real tracker sends: a simulated hour of shoppers on the Next.js shop.

The demo, the tests and the benchmark need traffic shaped exactly as the real tracker makes it
(SBW-Cloudworks/ClickSteam.NextJS `lib/clickstreamClient.ts`, `lib/clickstreamEvents.ts`,
`contexts/ClickstreamProvider.tsx`; summarised in REAL-PLATFORM.md §b), not a guess at it: the
loader's mapping, the dashboard's KPIs and the benchmark's byte counts all depend on which keys
are present, in which order, with which JSON types. So this module simulates visitors browsing
rather than drawing fields at random:

- a full page load sends `page_view` before auth has loaded (`anonymous`, `userId: null`, even
  for a signed-in user); the page trackers (`/`, `/product/…`, `/category/…`) then send their
  view event, and for a signed-in user on an untracked page a second `page_view` follows;
- an anonymous visitor's pending skip-once flag swallows the next untracked `page_view`;
- SPA navigations send the page tracker's event or a `page_view`, never both;
- clicks outside the specially tracked buttons send `click` with the element as
  `extractElement` reads it (`{}` for SVG icons, `dataset` values as strings);
- custom events leave `userId` out when anonymous (`withUser` sets it to undefined), where
  `page_view` and `click` send `null`;
- `isFirstVisit` is true only on the very first event of a new client;
- checkout needs a signed-in visitor and sends `checkout_start`, then `checkout_complete` 1.5 s
  later, totals as strings.

Everything is drawn from the caller's seeded `random.Random`: the same seed gives the same bytes.
"""

from __future__ import annotations

import base64
import hashlib
import random
import unicodedata
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

SHOP_URL: Final = "https://main.d1sbwclickstrm.amplifyapp.com"

#: The seeded catalogue's six `Product.variant` values and nineteen brands.
CATEGORIES: Final = ("laptop", "keyboard", "monitor", "mouse", "headphone", "accessory")
BRANDS: Final = (
    "Dell",
    "ASUS",
    "MSI",
    "Samsung",
    "LG",
    "Logitech",
    "Keychron",
    "Acer",
    "DareU",
    "Akko",
    "Razer",
    "E-Dra",
    "SteelSeries",
    "Corsair",
    "AULA",
    "AOC",
    "ViewSonic",
    "Gigabyte",
    "Xiaomi",
)
#: The footer's category links, and the slug the category sidebar pushes.
CATEGORY_SLUGS: Final = (
    "mobiles",
    "appliances",
    "smartphones",
    "air-conditioners",
    "washing-machine",
    "kitchen-appliances",
    "gadget-accessories",
)

#: Events the tracker fires (every name wired in its main branch).
TRACKED_EVENTS: Final = (
    "page_view",
    "click",
    "home_view",
    "category_view",
    "product_view",
    "add_to_cart_click",
    "remove_from_cart_click",
    "wishlist_toggle",
    "checkout_start",
    "checkout_complete",
)


@dataclass(frozen=True, slots=True)
class Product:
    id: str
    name: str
    category: str
    brand: str
    price: int
    slug: str
    hot_deal: bool = False

    def context(self, *, from_deal_page: bool = False) -> dict[str, Any]:
        """`toProductContext`: keys in its order; `discountPrice` is `Product.discount`, a
        percent, 0 for every seeded product; the Hot Deal page passes the slug bare."""
        return {
            "id": self.id,
            "name": self.name,
            "category": self.category,
            "brand": self.brand,
            "price": self.price,
            "discountPrice": 0,
            "urlPath": self.slug if from_deal_page else f"/product/{self.slug}",
        }


def _slug(name: str) -> str:
    text = unicodedata.normalize("NFKD", name.replace("đ", "d").replace("Đ", "D"))
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    words = "".join(c if c.isalnum() else " " for c in text).split()
    return "-".join(words)


def _cuid(index: int, name: str) -> str:
    """A Prisma cuid as the seed made them: `c` + time + counter + fingerprint + random."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    value = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
    tail = ""
    for _ in range(8):
        value, rest = divmod(value, 36)
        tail += digits[rest]
    counter = ""
    number = 0x30 + index * 3
    for _ in range(4):
        number, rest = divmod(number, 36)
        counter = digits[rest] + counter
    stamp = "cmipl" + "".join(digits[(index * 7 + i * 11) % 36] for i in range(4))
    return f"{stamp}{counter}xzk0{tail}"


# (name, variant, brand, price in VND, slug or None to derive it, on the Hot Deal page)
_CATALOGUE: Final[tuple[tuple[str, str, str, int, str | None, bool], ...]] = (
    ("Laptop Dell Vostro 3530 2H1TPI7", "laptop", "Dell", 16_690_000, None, False),
    ("Laptop Dell Vostro 3530 2H1TPI3", "laptop", "Dell", 11_990_000, None, True),
    ("Laptop ASUS Vivobook 15 X1504VA-NJ070W", "laptop", "ASUS", 13_490_000, None, False),
    ("Laptop gaming ASUS ROG Strix G16 G614JV-N4156W", "laptop", "ASUS", 38_990_000, None, False),
    ("Laptop gaming MSI Katana 15 B13VFK-1246VN", "laptop", "MSI", 26_990_000, None, True),
    ("Laptop MSI Modern 14 C12MO-660VN", "laptop", "MSI", 10_990_000, None, False),
    ("Laptop Acer Aspire 7 A715-76G-5806", "laptop", "Acer", 17_490_000, None, False),
    ("Laptop gaming Acer Predator Helios Neo 16", "laptop", "Acer", 42_990_000, None, False),
    (
        "Laptop gaming Gigabyte AORUS 16X 9KG-43VNC54SH",
        "laptop",
        "Gigabyte",
        57_990_000,
        None,
        False,
    ),
    ("Laptop LG Gram 16 2024 16Z90S-G.AH55A5", "laptop", "LG", 35_990_000, None, False),
    ("Bàn phím cơ AULA M75 TM", "keyboard", "AULA", 1_290_000, None, True),
    ("Bàn phím cơ Keychron K8 Pro RGB Hot-swap", "keyboard", "Keychron", 2_590_000, None, False),
    ("Bàn phím cơ Akko 3068B Plus World Tour Tokyo", "keyboard", "Akko", 1_890_000, None, False),
    ("Bàn phím cơ DareU EK87 V2 Đen", "keyboard", "DareU", 590_000, None, True),
    ("Bàn phím cơ E-Dra EK387L Pro Huano Switch", "keyboard", "E-Dra", 790_000, None, False),
    ("Bàn phím không dây Logitech MX Keys S", "keyboard", "Logitech", 2_790_000, None, False),
    ("Bàn phím gaming Corsair K70 RGB PRO", "keyboard", "Corsair", 3_990_000, None, False),
    ("Bàn phím Razer BlackWidow V4 X", "keyboard", "Razer", 3_490_000, None, False),
    (
        'Màn hình gaming ASUS TUF VG249Q1R 23.8" 165Hz',
        "monitor",
        "ASUS",
        4_990_000,
        "man-hinh-asus-tuf-vg249q1r",
        True,
    ),
    ('Màn hình Samsung Odyssey G5 27" 2K 165Hz', "monitor", "Samsung", 6_490_000, None, False),
    ('Màn hình LG UltraGear 27GR75Q-B 27" 2K 165Hz', "monitor", "LG", 6_990_000, None, False),
    ('Màn hình AOC 24G4 23.8" IPS 180Hz', "monitor", "AOC", 3_290_000, None, True),
    ('Màn hình ViewSonic VA2432-H 24" IPS 100Hz', "monitor", "ViewSonic", 2_190_000, None, False),
    ('Màn hình Dell UltraSharp U2724D 27" 2K', "monitor", "Dell", 9_990_000, None, False),
    ('Màn hình Gigabyte G27F 2 27" 170Hz', "monitor", "Gigabyte", 4_290_000, None, False),
    ('Màn hình MSI MAG 274QRF QD E2 27" 2K 180Hz', "monitor", "MSI", 7_490_000, None, False),
    (
        "Chuột gaming Razer DeathAdder Essential",
        "mouse",
        "Razer",
        490_000,
        "chuot-razer-deathadder-essential",
        False,
    ),
    (
        "Chuột gaming SteelSeries Rival 3",
        "mouse",
        "SteelSeries",
        690_000,
        "chuot-steelseries-rival-3",
        False,
    ),
    ("Chuột không dây Logitech G304 Lightspeed", "mouse", "Logitech", 790_000, None, True),
    ("Chuột không dây Logitech MX Master 3S", "mouse", "Logitech", 2_490_000, None, False),
    ("Chuột gaming DareU EM908 RGB", "mouse", "DareU", 290_000, None, False),
    ("Chuột gaming Corsair Harpoon RGB Wireless", "mouse", "Corsair", 1_090_000, None, False),
    ("Lót chuột E-Dra EMP01 cỡ vừa", "mouse", "E-Dra", 190_000, None, False),
    (
        "Tai nghe gaming SteelSeries Arctis Nova 1",
        "headphone",
        "SteelSeries",
        1_590_000,
        None,
        False,
    ),
    ("Tai nghe gaming Razer BlackShark V2 X", "headphone", "Razer", 1_190_000, None, True),
    ("Tai nghe gaming Corsair HS80 RGB Wireless", "headphone", "Corsair", 3_690_000, None, False),
    # One seeded name really ends in a space; the tracker sends it verbatim.
    (
        "Tai nghe không dây Logitech G435 Lightspeed ",
        "headphone",
        "Logitech",
        1_490_000,
        None,
        False,
    ),
    ("Tai nghe Bluetooth Xiaomi Redmi Buds 5", "headphone", "Xiaomi", 890_000, None, False),
    (
        "Loa Bluetooth Xiaomi Mi Portable 16W",
        "accessory",
        "Xiaomi",
        1_090_000,
        "loa-bluetooth-xiaomi-mi-16w",
        False,
    ),
    (
        "Webcam ViewSonic Full HD cho học online",
        "accessory",
        "ViewSonic",
        890_000,
        "webcam-viewsonic-fullhd",
        False,
    ),
    ("Hub Gigabyte USB-C 6 in 1", "accessory", "Gigabyte", 650_000, "hub-gigabyte-usbc-6in1", True),
    ("Webcam Logitech C920 HD Pro", "accessory", "Logitech", 1_690_000, None, False),
    ("Ổ cứng di động Samsung T7 1TB", "accessory", "Samsung", 2_490_000, None, False),
)
#: The four products the real samples show keep their real ids.
_KNOWN_IDS: Final = {
    "Laptop Dell Vostro 3530 2H1TPI7": "cmiplel24000uxzk04dxmtt1t",
    'Màn hình gaming ASUS TUF VG249Q1R 23.8" 165Hz': "cmiplf0ki003qxzk07i6po8zs",
    "Loa Bluetooth Xiaomi Mi Portable 16W": "cmiplfl4v007ixzk0wztpv0jg",
    "Webcam ViewSonic Full HD cho học online": "cmiplfkja007exzk0gqj1git7",
}
PRODUCTS: Final = tuple(
    Product(
        id=_KNOWN_IDS.get(name) or _cuid(index, name),
        name=name,
        category=variant,
        brand=brand,
        price=price,
        slug=slug or _slug(name),
        hot_deal=hot,
    )
    for index, (name, variant, brand, price, slug, hot) in enumerate(_CATALOGUE)
)
HOT_DEALS: Final = tuple(p for p in PRODUCTS if p.hot_deal)

USER_AGENTS: Final = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/142.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/142.0.0.0 Safari/537.36 Edg/142.0.0.0",
    "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/142.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/18.6 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:145.0) Gecko/20100101 Firefox/145.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/142.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.6 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "coc_coc_browser/141.0.254 Chrome/135.0.7049.254 Safari/537.36",
)
_USER_AGENT_WEIGHTS: Final = (30, 12, 22, 14, 5, 6, 4, 7)
#: First two octets of Vietnamese ISPs' IPv4 blocks (the shop's visitors).
_IP_BLOCKS: Final = ((171, 224, 32), (14, 160, 32), (113, 160, 32), (42, 112, 8), (116, 96, 16))

# Landing referrers: `document.referrer` of the page load, kept across SPA navigations.
_REFERRERS: Final = (
    (None, 40),
    ("https://www.google.com/", 34),
    ("https://l.facebook.com/", 10),
    ("https://www.facebook.com/", 4),
    ("https://coccoc.com/", 5),
    ("https://www.bing.com/", 3),
    ("https://zalo.me/", 4),
)

# Elements as `extractElement` reads them: {tag, id?, role, text?, dataset}. `text` follows
# CSS (the logo's `uppercase` reads "SHOPCART"); `role` is null when the attribute is absent.
_HEADER = {"/": "Home", "/shop": "Shop", "/deal": "Hot Deal"}
_FOOTER = {
    "/about": "About us",
    "/contact": "Contact us",
    "/terms": "Terms & Conditions",
    "/privacy": "Privacy Policy",
    "/faqs": "FAQs",
    "/help": "Help",
}
_FOOTER_CATEGORIES = {
    "mobiles": "Mobiles",
    "appliances": "Appliances",
    "smartphones": "Smartphones",
    "air-conditioners": "Air Conditioners",
    "washing-machine": "Washing Machine",
    "kitchen-appliances": "Kitchen Appliances",
    "gadget-accessories": "gadget accessories",
}
_BUTTON_TEXTS = ("Xem thêm", "Xem tất cả", "Mua ngay", "Tiếp tục mua sắm", "Đăng ký")
_TABS = ("Mô tả", "Thông số kỹ thuật", "Đánh giá")
_BLURB = (
    "Sản phẩm chính hãng, bảo hành 24 tháng tại các trung tâm bảo hành trên toàn quốc. "
    "Miễn phí giao hàng cho đơn từ 500.000đ, đổi trả trong 7 ngày nếu có lỗi từ nhà sản xuất. "
    "Hỗ trợ trả góp 0% qua thẻ tín dụng."
)


def visible_text(text: str) -> str | None:
    """`extractElement`'s text: trimmed, whitespace collapsed, cut to 160 characters + "...",
    absent when empty."""
    collapsed = " ".join(text.split())
    if len(collapsed) > 160:
        return collapsed[:160] + "..."
    return collapsed or None


def _element(
    tag: str,
    *,
    text: str | None = None,
    id_: str | None = None,
    role: str | None = None,
    **dataset: str,
) -> dict[str, Any]:
    element: dict[str, Any] = {"tag": tag}
    if id_:
        element["id"] = id_
    element["role"] = role
    shown = visible_text(text) if text else None
    if shown is not None:
        element["text"] = shown
    element["dataset"] = dict(dataset)
    return element


def uuid4(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _fallback_id(rng: random.Random, epoch_ms: int) -> str:
    """`${Date.now()}-${Math.random().toString(16).slice(2, 10)}`: a browser without
    `crypto.randomUUID` (a non-secure context) makes every id this way."""
    return f"{epoch_ms}-{rng.getrandbits(32):08x}"


@dataclass(slots=True)
class Visitor:
    """One browser: its localStorage client id, its Cognito user if it signs in, its network."""

    client_id: str
    user_id: str | None
    user_agent: str
    source_ip: str
    #: The tracker has not yet created this browser's client id: its next event is the first.
    first_visit_pending: bool
    #: No `crypto.randomUUID` (a page served over plain HTTP): every id is `<epoch ms>-<8 hex>`.
    insecure: bool = False
    #: A cached bundle from before eventId existed (tracker commit a025af9): no eventId, and
    #: custom events built without the user (`userId: null`, `anonymous`).
    legacy_tracker: bool = False
    #: Posting to the REST v1 stack, whose ingest block has no sourceIp/userAgent/method/path.
    rest_endpoint: bool = False
    cart: dict[str, int] = field(default_factory=dict)
    #: When this browser's latest session ended (a reused visitor starts after it).
    busy_until_ms: int = 0


@dataclass(slots=True)
class Sent:
    """One POST the tracker made, and what the ingest Lambda will know about it."""

    payload: dict[str, Any]
    client_ms: int
    received_ms: int
    visitor: Visitor
    session: int
    #: The API Gateway requestId and the X-Ray trace id's random part, fixed at send time.
    request_id: str
    trace_tail: str


class Browse:
    """One visitor's session: a page load, then SPA navigations and clicks until they leave."""

    def __init__(
        self,
        rng: random.Random,
        visitor: Visitor,
        *,
        start_ms: int,
        number: int,
    ) -> None:
        self.rng = rng
        self.visitor = visitor
        self.number = number
        self.legacy = visitor.legacy_tracker
        self.now = start_ms
        self.session_id = _fallback_id(rng, start_ms) if visitor.insecure else uuid4(rng)
        self.referrer = rng.choices(*zip(*_REFERRERS, strict=True))[0]
        self.path = "/"
        self.query = ""
        self.auth_loaded = False
        self.skip_next_page_view = False
        self.sent: list[Sent] = []

    # --- what the tracker sends ------------------------------------------------------------

    def _make_id(self) -> str:
        return _fallback_id(self.rng, self.now) if self.visitor.insecure else uuid4(self.rng)

    def _send(self, name: str, **extra: Any) -> None:
        """`buildBaseEvent` (+ `trackCustom`'s spread): the base keys in their order, the
        user as each call site passes it, then the event's own fields."""
        signed_in = self.visitor.user_id is not None and self.auth_loaded
        custom = name not in ("page_view", "click")
        payload: dict[str, Any] = {"eventName": name}
        event_id = self._make_id()
        if not self.legacy:
            payload["eventId"] = event_id
        payload["pageUrl"] = f"{SHOP_URL}{self.path}{self.query}"
        payload["referrer"] = self.referrer
        if custom and self.legacy:
            payload["userId"] = None
            signed_in = False
        elif signed_in:
            payload["userId"] = self.visitor.user_id
        elif not custom:
            payload["userId"] = None
        # else: `withUser` set userId to undefined, which JSON.stringify drops.
        payload["userLoginState"] = "logged_in" if signed_in else "anonymous"
        payload["clientId"] = self.visitor.client_id
        payload["sessionId"] = self.session_id
        payload["isFirstVisit"] = self.visitor.first_visit_pending
        self.visitor.first_visit_pending = False
        payload.update(extra)
        # Sends of one tab arrive in order (keep-alive fetches on one connection).
        received = self.now + self.rng.randint(35, 420)
        if self.sent:
            received = max(received, self.sent[-1].received_ms + 1)
        self.sent.append(
            Sent(
                payload,
                self.now,
                received,
                self.visitor,
                self.number,
                # The REST v1 stack's requestId is a UUID; the HTTP API's is 16 characters.
                uuid4(self.rng) if self.visitor.rest_endpoint else http_request_id(self.rng),
                f"{self.rng.getrandbits(96):024x}",
            )
        )

    def _wait(self, low_ms: int, high_ms: int) -> None:
        self.now += self.rng.randint(low_ms, high_ms)

    # --- pages ------------------------------------------------------------------------------

    def _view_event(self) -> tuple[str, dict[str, Any]] | None:
        """The page tracker's event for the current page, if the page has one."""
        if self.path == "/":
            return "home_view", {}
        if self.path.startswith("/product/"):
            product = _PRODUCTS_BY_SLUG[self.path.removeprefix("/product/")]
            return "product_view", {"product": product.context()}
        if self.path.startswith("/category/"):
            slug = self.path.removeprefix("/category/")
            return "category_view", {"product": {"category": slug, "id": slug}}
        return None

    def land(self, path: str, query: str = "") -> None:
        """A full page load: `page_view` before auth loads, then the page tracker's event or,
        for a signed-in visitor, a second `page_view` once the user is known."""
        self.path, self.query = path, query
        self._send("page_view")
        self._wait(150, 900)
        self.auth_loaded = True
        view = self._view_event()
        signed_in = self.visitor.user_id is not None
        if view is not None:
            self._send(view[0], **view[1])
            # Anonymous: the provider does not re-run, so the skip-once flag stays set.
            self.skip_next_page_view = not signed_in
        elif signed_in:
            self._send("page_view")

    def navigate(self, path: str) -> None:
        """An SPA navigation: the page tracker's event (its skip flag eats the provider's
        `page_view`) or a `page_view`, unless a pending skip flag swallows it."""
        self._wait(120, 700)
        self.path, self.query = path, ""
        view = self._view_event()
        if view is not None:
            self._send(view[0], **view[1])
            self.skip_next_page_view = False
        elif self.skip_next_page_view:
            self.skip_next_page_view = False
        else:
            self._send("page_view")

    def click(self, element: dict[str, Any], to: str | None = None) -> None:
        self._send("click", element=element)
        if to is not None:
            self.navigate(to)

    # --- the session ----------------------------------------------------------------------

    def run(self, max_events: int = 80) -> list[Sent]:
        rng = self.rng
        landing, query = self._landing()
        self.land(landing, query)
        while rng.random() > 0.2 and len(self.sent) < max_events:
            self._wait(2_500, 55_000)
            self._act()
        self.visitor.busy_until_ms = self.now
        return self.sent[:max_events]

    def _landing(self) -> tuple[str, str]:
        rng = self.rng
        query = ""
        if self.referrer == "https://l.facebook.com/":
            query = f"?fbclid=IwZXh0bgNhZW0CMTEAAR{rng.getrandbits(120):030x}"
        roll = rng.random()
        if roll < 0.36:
            return "/", query
        if roll < 0.58:
            return f"/product/{rng.choice(PRODUCTS).slug}", query
        if roll < 0.72:
            return "/shop", query
        if roll < 0.84:
            return "/deal", query
        if roll < 0.89:
            return f"/category/{rng.choice(CATEGORY_SLUGS)}", query
        if roll < 0.94:
            return "/cart", query
        if roll < 0.97:
            return "/wishlist", query
        return rng.choice(tuple(_FOOTER)), query

    def _act(self) -> None:
        rng = self.rng
        path = self.path
        roll = rng.random()
        if roll < 0.24:  # the header, the logo, the icons or the footer, from any page
            self._chrome_click()
        elif roll < 0.32:  # a click that goes nowhere: an icon, a paragraph, a button
            self._idle_click()
        elif path.startswith("/product/"):
            self._on_product(rng.random())
        elif path in ("/", "/shop", "/deal", "/wishlist"):
            self._on_listing(rng.random())
        elif path == "/cart":
            self._on_cart(rng.random())
        elif path.startswith("/category/") and rng.random() < 0.4:
            # The category sidebar pushes `/category/undefined`.
            label = rng.choice(("Laptop", "Bàn phím", "Màn hình", "Tai nghe", "Phụ kiện"))
            self.click(_element("button", text=label, slot="button"), "/category/undefined")
        else:
            self._chrome_click()

    def _chrome_click(self) -> None:
        rng = self.rng
        roll = rng.random()
        if roll < 0.46:
            path, label = rng.choice(tuple(_HEADER.items()))
            self.click(_element("a", text=label), path)
        elif roll < 0.56:
            logo = "SHOPCART" if rng.random() < 0.85 else "T"  # the h2, or its last letter
            self.click(_element("h2" if len(logo) > 1 else "span", text=logo), "/")
        elif roll < 0.78:
            self.click({}, "/cart")  # the cart icon: an SVG, so {}
        elif roll < 0.86:
            self.click({}, "/wishlist")
        elif roll < 0.95:
            slug, label = rng.choice(tuple(_FOOTER_CATEGORIES.items()))
            self.click(_element("a", text=label), f"/category/{slug}")
        else:
            path, label = rng.choice(tuple(_FOOTER.items()))
            self.click(_element("a", text=label), path)

    def _idle_click(self) -> None:
        rng = self.rng
        roll = rng.random()
        if roll < 0.40:
            self.click({})
        elif roll < 0.60:
            self.click(_element("button", text=rng.choice(_BUTTON_TEXTS), slot="button"))
        elif roll < 0.75:
            self.click(_element("div", text=_BLURB))
        elif roll < 0.85:
            self.click(_element("input", slot="input"))  # the search box: no text
        else:
            self.click(_element("img"))

    def _product_card(self, products: tuple[Product, ...]) -> None:
        product = self.rng.choice(products)
        if self.rng.random() < 0.7:
            self.click(_element("a", text=product.name), f"/product/{product.slug}")
        else:
            self.click(_element("img"), f"/product/{product.slug}")

    def _add_to_cart(self, product: Product, *, from_deal_page: bool = False) -> None:
        # The button is inside `[global-clickstream-ignore-click='true']`: no click event.
        self.visitor.cart[product.slug] = self.visitor.cart.get(product.slug, 0) + 1
        self._send("add_to_cart_click", product=product.context(from_deal_page=from_deal_page))
        if self.rng.random() < 0.45:
            self._wait(1_500, 12_000)
            self.click({}, "/cart")
            if self.visitor.user_id is not None and self.rng.random() < 0.5:
                self._wait(4_000, 40_000)
                self._checkout()

    def _checkout(self) -> None:
        """The cart's "Thanh toán" button (signed-in only, ignored by the click listener):
        `checkout_start`, then `checkout_complete` when the simulated checkout ends 1.5 s later.
        Totals are Σ price·quantity, and the item count the distinct items, all as strings."""
        cart = self.visitor.cart
        total = sum(_PRODUCTS_BY_SLUG[slug].price * n for slug, n in cart.items())
        self._send(
            "checkout_start",
            element={"dataset": {"cartId": "", "total": str(total), "itemCount": str(len(cart))}},
        )
        self.now += 1_500
        self._send(
            "checkout_complete",
            element={"dataset": {"orderId": "", "orderNumber": "", "total": str(total)}},
        )
        cart.clear()

    def _on_listing(self, roll: float) -> None:
        rng = self.rng
        products = HOT_DEALS if self.path == "/deal" else PRODUCTS
        if self.path == "/shop" and roll < 0.25:
            variant = rng.choice(CATEGORIES)
            self.click(
                _element(
                    "button", id_=variant, role="radio", state="unchecked", slot="radio-group-item"
                )
            )
        elif roll < 0.86:
            self._product_card(products)
        else:
            self._add_to_cart(rng.choice(products), from_deal_page=self.path == "/deal")

    def _on_product(self, roll: float) -> None:
        rng = self.rng
        product = _PRODUCTS_BY_SLUG[self.path.removeprefix("/product/")]
        if roll < 0.15:
            self._add_to_cart(product)
        elif roll < 0.20:
            on = rng.random() < 0.8
            # The heart sets the click-once skip flag: the tracker sends no click for it.
            self._send(
                "wishlist_toggle",
                product=product.context(),
                element={"dataset": {"toggledOn": "true" if on else "false"}},
            )
        elif roll < 0.30:
            tab = rng.choice(_TABS)
            self.click(
                _element(
                    "button",
                    text=tab,
                    id_=f"radix-_R_{rng.randrange(1, 9)}mlb_-trigger-{_TABS.index(tab)}",
                    role="tab",
                    state="inactive",
                    orientation="horizontal",
                    slot="tabs-trigger",
                )
            )
        elif roll < 0.36:
            self.click(_element("img"))
        elif roll < 0.66:
            related = tuple(p for p in PRODUCTS if p.category == product.category)
            self._product_card(related)
        else:
            self._chrome_click()

    def _on_cart(self, roll: float) -> None:
        rng = self.rng
        cart = self.visitor.cart
        if cart and roll < 0.18:
            slug = rng.choice(sorted(cart))
            del cart[slug]
            # The trash icon is ignored by the click listener.
            self._send("remove_from_cart_click", product=_PRODUCTS_BY_SLUG[slug].context())
        elif cart and roll < 0.60 and self.visitor.user_id is not None:
            self._checkout()
        elif roll < 0.72:
            self.click({})  # the quantity buttons: SVG icons
        elif roll < 0.86:
            self._chrome_click()
        else:
            self._product_card(PRODUCTS)


_PRODUCTS_BY_SLUG: Final = {p.slug: p for p in PRODUCTS}


def http_request_id(rng: random.Random) -> str:
    """An HTTP API `requestContext.requestId`: 16 characters ending in `=`, e.g.
    `ZhgEJiTvSQ0EJnA=` (base64 of 11 bytes)."""
    return base64.b64encode(rng.getrandbits(88).to_bytes(11, "big")).decode()


def _source_ip(rng: random.Random) -> str:
    first, second, width = rng.choice(_IP_BLOCKS)
    return f"{first}.{second + rng.randrange(width)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


#: Odd visitors a caller can ask `sessions` for (REAL-PLATFORM.md §a, §b).
ODD_VISITORS: Final = ("legacy_tracker", "insecure", "rest_endpoint")


def new_visitor(rng: random.Random, *, now_ms: int, odd: str | None = None) -> Visitor:
    """A browser: a third new (its first event creates the client id), three in ten signed in."""
    new = rng.random() < 0.34
    insecure = odd == "insecure"
    if insecure:
        # Made by the same fallback as every other id: when the browser first came.
        created = now_ms if new else now_ms - rng.randrange(3_600_000, 30 * 86_400_000)
        client_id = _fallback_id(rng, created)
    else:
        client_id = uuid4(rng)
    user_id = uuid4(rng) if rng.random() < 0.30 else None
    cart: dict[str, int] = {}
    if not new and rng.random() < 0.15:  # the cart persists in localStorage
        for product in rng.sample(PRODUCTS, rng.randint(1, 2)):
            cart[product.slug] = 1
    return Visitor(
        client_id=client_id,
        user_id=user_id,
        user_agent=rng.choices(USER_AGENTS, _USER_AGENT_WEIGHTS)[0],
        source_ip=_source_ip(rng),
        first_visit_pending=new,
        insecure=insecure,
        legacy_tracker=odd == "legacy_tracker",
        rest_endpoint=odd == "rest_endpoint",
        cart=cart,
    )


def sessions(
    rng: random.Random, hour: datetime, *, odd: list[str] | None = None
) -> Iterator[list[Sent]]:
    """Endless sessions whose events the ingest Lambda received within `hour`, each in the
    order sent. Sessions start from 20 minutes before the hour (their tails land in it).

    `odd` lists odd visitors (`ODD_VISITORS`) to mix in, one session each, early on; a session
    that sent nothing within the hour gives its kind to a later one."""
    start = int(hour.astimezone(UTC).timestamp() * 1000)
    end = start + 3_600_000
    pending = list(odd or ())
    regulars: list[Visitor] = []
    number = 0
    while True:
        begin = start + rng.randrange(-1_200_000, 3_600_000)
        kind = pending.pop(0) if pending and number % 3 == 1 else None
        if kind is None and regulars and rng.random() < 0.06:
            visitor = rng.choice(regulars)  # a second tab, or back later in the hour
            begin = max(begin, visitor.busy_until_ms + rng.randrange(30_000, 900_000))
        else:
            visitor = new_visitor(rng, now_ms=begin, odd=kind)
            if kind is None:
                regulars.append(visitor)
        # Odd visitors stay a handful of events: they are there to be found, not to dominate.
        limit = rng.randint(2, 6) if kind is not None else 80
        browse = Browse(rng, visitor, start_ms=begin, number=number)
        sent = [s for s in browse.run(limit) if start <= s.received_ms < end]
        number += 1
        if sent:
            yield sent
        elif kind is not None:
            pending.insert(0, kind)
