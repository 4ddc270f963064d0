"""The simulator's templates: the seeded kinds, send-time checks component by component,
media headers by link, template management with review, and quick-reply taps."""

from __future__ import annotations

import copy

import pytest

from tests.sim_fixtures import NUMBERS, VERSION

ONE, TWO, THREE = (n["phone_number_id"] for n in NUMBERS)
WABA_ONE, WABA_THREE = NUMBERS[0]["waba_id"], NUMBERS[2]["waba_id"]
UK = "447700900123"
IMAGE = {"type": "image", "image": {"link": "https://cdn.example.com/p/spring.jpg"}}


def send_template(sim, name: str, components: list | None, to: str = UK, pnid: str = ONE):
    template: dict = {"name": name, "language": {"code": "en_US"}}
    if components is not None:
        template["components"] = components
    return sim.send({"messaging_product": "whatsapp", "recipient_type": "individual", "to": to,
                     "type": "template", "template": template}, pnid=pnid)


def text(value: str, name: str | None = None) -> dict:
    return {"type": "text", "text": value} | ({"parameter_name": name} if name else {})


def button(index: int, sub_type: str, *params: dict) -> dict:
    return {"type": "button", "sub_type": sub_type, "index": str(index), "parameters": list(params)}


# A correct send of every seeded kind (templates.md, "Send shape").
GOOD = {
    "spring_sale": [
        {"type": "header", "parameters": [IMAGE]},
        {"type": "body", "parameters": [text("Ana", "first_name"), text("20%", "discount"),
                                        text("May 31", "end_date")]},
        button(0, "url", text("spring-ana")),
        button(1, "quick_reply", {"type": "payload", "payload": "STOP_PROMOS"}),
    ],
    "new_arrivals_video": [
        {"type": "header", "parameters": [
            {"type": "video", "video": {"link": "https://cdn.example.com/v/new.mp4"}}]},
        {"type": "body", "parameters": [text("Ana")]},
    ],
    "invoice_ready": [
        {"type": "header", "parameters": [{"type": "document", "document": {
            "link": "https://cdn.example.com/i/1001.pdf", "filename": "INV-1001.pdf"}}]},
        {"type": "body", "parameters": [text("INV-1001"), text("$120.00")]},
    ],
    "coupon_reminder": [
        {"type": "header", "parameters": [text("Pablo")]},
        {"type": "body", "parameters": [text("SUMMER20"), text("10")]},
        button(0, "copy_code", {"type": "coupon_code", "coupon_code": "SUMMER20"}),
        button(1, "url", text("SUMMER20")),
    ],
    "visit_store": [
        {"type": "header", "parameters": [{"type": "location", "location": {
            "latitude": 51.5072, "longitude": -0.1276, "name": "Main Street",
            "address": "1 Main Street, London"}}]},
        {"type": "body", "parameters": [text("our Main Street store")]},
    ],
    "login_code": [
        {"type": "body", "parameters": [text("123456")]},
        button(0, "url", text("123456")),
    ],
}


def good(name: str) -> list:
    return copy.deepcopy(GOOD[name])


def error(resp, code: int) -> str:
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["code"] == code, err
    assert err["message"].startswith(f"(#{code}) ") and err["type"] == "OAuthException"
    assert err["error_data"]["messaging_product"] == "whatsapp"
    return err["error_data"]["details"]


# --- the seeded templates ------------------------------------------------------------------

def test_seeded_templates_include_every_kind_in_metas_listing_shape(sim):
    for waba, token in ((WABA_ONE, "tok-one"), (WABA_THREE, "tok-three")):
        listed = sim.http.get(f"/{VERSION}/{waba}/message_templates", params={"limit": 100},
                              headers={"Authorization": f"Bearer {token}"}).json()["data"]
        by_name = {t["name"]: t for t in listed if t["language"] == "en_US"}
        assert set(GOOD) <= set(by_name)
    spring = by_name["spring_sale"]
    assert spring["parameter_format"] == "NAMED" and spring["category"] == "MARKETING"
    assert spring["status"] == "APPROVED" and spring["sub_category"] == "CUSTOM"
    assert spring["quality_score"] == {"score": "GREEN"} and spring["rejected_reason"] == "NONE"
    header, body, footer, buttons = spring["components"]
    assert header == {"type": "HEADER", "format": "IMAGE", "example": {"header_handle": [
        "https://scontent.whatsapp.net/v/t61.29466-34/spring_sale.jpg"]}}
    assert [p["param_name"] for p in body["example"]["body_text_named_params"]] == [
        "first_name", "discount", "end_date"]
    assert footer == {"type": "FOOTER", "text": "Reply STOP to opt out"}
    assert buttons["buttons"][0] == {"type": "URL", "text": "Shop now", "example": ["spring"],
                                     "url": "https://shop.example.com/sale/{{1}}"}
    assert {t: by_name[t]["parameter_format"] for t in GOOD if t != "spring_sale"} == dict.fromkeys(
        ["new_arrivals_video", "invoice_ready", "coupon_reminder", "visit_store", "login_code"],
        "POSITIONAL")
    assert by_name["login_code"]["category"] == "AUTHENTICATION"
    assert by_name["login_code"]["components"][1]["buttons"] == [
        {"type": "OTP", "otp_type": "COPY_CODE", "text": "Copy code"}]


@pytest.mark.parametrize("name", sorted(GOOD))
def test_a_send_with_every_component_right_is_accepted(sim, name):
    resp = send_template(sim, name, good(name))
    assert resp.status_code == 200, resp.text
    assert resp.json()["messages"][0]["message_status"] == "accepted"


def test_optional_quick_reply_and_document_filename_may_be_left_out(sim):
    spring = [c for c in good("spring_sale") if c.get("sub_type") != "quick_reply"]
    assert send_template(sim, "spring_sale", spring).status_code == 200
    invoice = good("invoice_ready")
    del invoice[0]["parameters"][0]["document"]["filename"]
    assert send_template(sim, "invoice_ready", invoice).status_code == 200


# --- 132000: a component's parameter count ---------------------------------------------

def _drop_button(name: str, index: int) -> list:
    return [c for c in good(name) if c.get("index") != str(index)]


def _with(name: str, change) -> list:
    comps = good(name)
    change(comps)
    return comps


COUNT_CASES = [
    ("spring_sale", _drop_button("spring_sale", 0),
     ("button at index 0 (URL): number of localizable_params (0) does not match the expected "
     "number of params (1)")),
    ("coupon_reminder", _drop_button("coupon_reminder", 0),
     ("button at index 0 (COPY_CODE): number of localizable_params (0) does not match the "
     "expected number of params (1)")),
    ("login_code", _drop_button("login_code", 0),
     ("button at index 0 (OTP): number of localizable_params (0) does not match the expected "
     "number of params (1)")),
    ("coupon_reminder", _with("coupon_reminder", lambda c: c.pop(0)),
     "header: number of localizable_params (0) does not match the expected number of params (1)"),
    ("new_arrivals_video", _with("new_arrivals_video", lambda c: c[0]["parameters"].append(
        c[0]["parameters"][0])),
     "header: number of localizable_params (2) does not match the expected number of params (1)"),
    ("invoice_ready", _with("invoice_ready", lambda c: c[1]["parameters"].pop()),
     "body: number of localizable_params (1) does not match the expected number of params (2)"),
    ("coupon_reminder", _with("coupon_reminder", lambda c: c[3]["parameters"].append(text("x"))),
     ("button at index 1 (URL): number of localizable_params (2) does not match the expected "
     "number of params (1)")),
    ("invoice_ready", good("invoice_ready") + [button(0, "url", text("x"))],
     ("button at index 0 (PHONE_NUMBER): number of localizable_params (1) does not match the "
     "expected number of params (0)")),
    ("visit_store", good("visit_store") + [button(3, "quick_reply", {"type": "payload",
                                                                     "payload": "X"})],
     ("button at index 3: number of localizable_params (1) does not match the expected number "
     "of params (0): template visit_store has 0 buttons")),
]


@pytest.mark.parametrize("name,components,details", COUNT_CASES)
def test_a_parameter_count_that_differs_is_132000_naming_the_component(sim, name, components,
                                                                        details):
    assert error(send_template(sim, name, components), 132000) == details


# --- 132012: a parameter of the wrong kind ------------------------------------------------

def _header(name: str, param: dict) -> list:
    return _with(name, lambda c: c[0].update(parameters=[param]))


def _named(change) -> list:
    return _with("spring_sale", lambda c: change(c[1]["parameters"]))


KIND_CASES = [
    ("new_arrivals_video", _header("new_arrivals_video", IMAGE),
     "header: Format mismatch, expected VIDEO, received IMAGE"),
    ("spring_sale", _header("spring_sale", text("https://cdn.example.com/p.jpg")),
     "header: Format mismatch, expected IMAGE, received TEXT"),
    ("spring_sale", [c for c in good("spring_sale") if c["type"] != "header"],
     "header: Format mismatch, expected IMAGE, received UNKNOWN"),
    ("invoice_ready", _header("invoice_ready", {"type": "document", "document": {
        "filename": "a.pdf"}}), "header: the document parameter needs document.link or document.id"),
    ("coupon_reminder", _header("coupon_reminder", IMAGE),
     "header: Format mismatch, expected TEXT, received IMAGE"),
    ("visit_store", _header("visit_store", {"type": "location", "location": {"name": "x"}}),
     "header: a location parameter needs location.latitude and location.longitude (numbers)"),
    ("spring_sale", _named(lambda ps: ps[0].pop("parameter_name")),
     ("body: parameter 1 has no parameter_name; template spring_sale uses NAMED parameters "
     "['first_name', 'discount', 'end_date']")),
    ("spring_sale", _named(lambda ps: ps[2].update(parameter_name="until")),
     ("body: unknown parameter_name 'until'; the template's named params are "
     "['first_name', 'discount', 'end_date']")),
    ("invoice_ready", _with("invoice_ready", lambda c: c[1]["parameters"][0].update(
        parameter_name="invoice")),
     ("body: parameter_name given, but template invoice_ready uses POSITIONAL parameters "
     "({{1}}, ...)")),
    ("invoice_ready", _with("invoice_ready", lambda c: c[1]["parameters"].__setitem__(0, IMAGE)),
     "body: parameter 1 is of type image; a body parameter is text, currency or date_time"),
    ("coupon_reminder", _with("coupon_reminder", lambda c: c[2]["parameters"].__setitem__(
        0, text("SUMMER20"))),
     "button at index 0 (COPY_CODE): parameter type must be coupon_code, got text"),
    ("coupon_reminder", _with("coupon_reminder", lambda c: c[3].update(sub_type="quick_reply")),
     "button at index 1 (URL): sub_type must be url, got quick_reply"),
    ("spring_sale", _with("spring_sale", lambda c: c[3]["parameters"].__setitem__(
        0, text("STOP"))),
     "button at index 1 (QUICK_REPLY): parameter type must be payload, got text"),
]


@pytest.mark.parametrize("name,components,details", KIND_CASES)
def test_a_parameter_of_the_wrong_kind_is_132012_naming_the_component(sim, name, components,
                                                                       details):
    assert error(send_template(sim, name, components), 132012) == details


def test_empty_values_are_131009_and_a_button_without_index_131008(sim):
    empty_suffix = _with("spring_sale", lambda c: c[2]["parameters"].__setitem__(0, text(" ")))
    error(send_template(sim, "spring_sale", empty_suffix), 131009)
    empty_payload = _with("spring_sale", lambda c: c[3]["parameters"][0].update(payload=""))
    assert "payload must be a non-empty string" in error(
        send_template(sim, "spring_sale", empty_payload), 131009)
    empty_name = _named(lambda ps: ps[0].update(text=""))
    error(send_template(sim, "spring_sale", empty_name), 131009)
    no_index = _with("spring_sale", lambda c: c[2].pop("index"))
    assert "index" in error(send_template(sim, "spring_sale", no_index), 131008)


def test_body_text_too_long_once_filled_in_is_132005(sim):
    long = _with("invoice_ready", lambda c: c[1]["parameters"][0].update(text="x" * 1010))
    assert "at most 1024" in error(send_template(sim, "invoice_ready", long), 132005)


def test_existing_templates_keep_their_checks(sim):
    # A quick reply with no component, and a text-header template without a header param.
    body = [{"type": "body", "parameters": [text("Ana"), text("A-1")]}]
    assert send_template(sim, "order_update", body).status_code == 200
    assert send_template(sim, "hello_world", None).status_code == 200
    assert "number of localizable_params (1)" in error(
        send_template(sim, "hello_world", [{"type": "header", "parameters": [text("x")]}]), 132000)


# --- a media header by link: Meta's fetcher, later --------------------------------------

@pytest.mark.usefixtures("quiet_world")
@pytest.mark.parametrize("link,details", [
    ("https://cdn.example.com/broken/p.jpg",
     "Downloading media from weblink failed with http code 404, status message Not Found"),
    ("https://images.shop.invalid/p.jpg",
     "Downloading media from weblink failed: could not connect to host images.shop.invalid"),
])
def test_a_header_link_the_fetcher_cannot_get_fails_later_with_131053(sim, sim_receiver, link,
                                                                     details):
    ok = send_template(sim, "spring_sale", good("spring_sale"), to="447700900001")
    bad = send_template(sim, "spring_sale", _header("spring_sale", {"type": "image", "image": {
        "link": link}}), to="447700900002")
    assert ok.status_code == 200 and bad.status_code == 200, bad.text
    bad_id, ok_id = bad.json()["messages"][0]["id"], ok.json()["messages"][0]["id"]
    failed = sim_receiver.wait_for(lambda r: [s for s in r.statuses() if s["id"] == bad_id],
                                   what="the failed status")
    assert [s["status"] for s in failed] == ["failed"]
    assert failed[0]["errors"][0]["code"] == 131053
    assert failed[0]["errors"][0]["error_data"]["details"] == details
    delivered = sim_receiver.wait_for(lambda r: [s["status"] for s in r.statuses()
                                                 if s["id"] == ok_id and s["status"] == "delivered"],
                                      what="the good send delivered")
    assert delivered == ["delivered"]
    assert sim.stats()["failed_later_by_code"] == {"131053": 1}


def test_bad_link_rules_are_settings(sim):
    sim.faults(media={"bad_link_markers": ["/gone/"], "unreachable_hosts": []})
    comps = _header("spring_sale", {"type": "image", "image": {"link": "ftp://x/p.jpg"}})
    assert "http or https" in error(send_template(sim, "spring_sale", comps), 131009)
    assert sim.http.post("/_sim/faults", json={"media": {"bad_link_markers": "x"}}).status_code == 400


# --- template management ------------------------------------------------------------------

def manage(sim, method: str, waba: str = WABA_ONE, token: str = "tok-one", **kwargs):
    return sim.http.request(method, f"/{VERSION}/{waba}/message_templates",
                            headers={"Authorization": f"Bearer {token}"}, **kwargs)


def new_template(name: str = "autumn_sale", **extra) -> dict:
    return {"name": name, "language": "en_US", "category": "MARKETING", "components": [
        {"type": "HEADER", "format": "IMAGE",
         "example": {"header_handle": ["4::aW1hZ2UvanBlZw==:ARbX"]}},
        {"type": "BODY", "text": "Hi {{1}}, autumn prices until {{2}}.",
         "example": {"body_text": [["Ana", "Oct 31"]]}},
        {"type": "BUTTONS", "buttons": [{"type": "URL", "text": "Shop", "example": ["autumn"],
                                         "url": "https://shop.example.com/a/{{1}}"}]},
    ], **extra}


def status_updates(receiver) -> list[dict]:
    return receiver.changes("message_template_status_update")


def test_a_created_template_is_pending_then_approved_by_webhook_on_the_sim_clock(sim, sim_receiver):
    sim.clock(frozen=True)
    resp = manage(sim, "POST", json=new_template())
    assert resp.status_code == 200, resp.text
    created = resp.json()
    assert created["status"] == "PENDING" and created["category"] == "MARKETING"
    listed = manage(sim, "GET", params={"name": "autumn_sale"}).json()["data"]
    assert [(t["id"], t["status"], t["quality_score"]) for t in listed] == [
        (created["id"], "PENDING", {"score": "UNKNOWN"})]
    comps = [{"type": "header", "parameters": [IMAGE]},
             {"type": "body", "parameters": [text("Ana"), text("Oct 31")]},
             button(0, "url", text("ana"))]
    assert error(send_template(sim, "autumn_sale", comps), 132001)
    # Nothing before the review: its timer is all the simulator has pending.
    assert sim.stats()["webhooks"]["pending"] == 1 and status_updates(sim_receiver) == []
    sim.clock(advance_s=5.0)
    update = sim_receiver.wait_for(status_updates, what="the review webhook")
    assert update == [{"event": "APPROVED", "message_template_id": int(created["id"]),
                       "message_template_name": "autumn_sale",
                       "message_template_language": "en_US", "reason": "NONE",
                       "message_template_category": "MARKETING"}]
    assert manage(sim, "GET", params={"name": "autumn_sale"}).json()["data"][0]["status"] == "APPROVED"
    assert send_template(sim, "autumn_sale", comps).status_code == 200


def test_a_template_can_be_rejected_with_a_reason(sim, sim_receiver):
    sim.faults(template_review={"delay_s": 0.0})
    created = manage(sim, "POST", json=new_template("reject_autumn")).json()
    adjacent = new_template("two_vars")
    adjacent["components"][1] = {"type": "BODY", "text": "Dear {{1}} {{2}}, welcome.",
                                 "example": {"body_text": [["Ana", "Lima"]]}}
    assert manage(sim, "POST", json=adjacent).status_code == 200
    updates = sim_receiver.wait_for(lambda r: len(status_updates(r)) == 2 and status_updates(r),
                                    what="two reviews")
    by_name = {u["message_template_name"]: u for u in updates}
    assert by_name["reject_autumn"]["event"] == "REJECTED"
    assert by_name["reject_autumn"]["reason"] == "INVALID_FORMAT"
    assert by_name["reject_autumn"]["message_template_id"] == int(created["id"])
    assert set(by_name["reject_autumn"]["rejection_info"]) == {"reason", "recommendation"}
    assert by_name["two_vars"]["event"] == "REJECTED"
    listed = {t["name"]: t for t in manage(sim, "GET", params={"status": "REJECTED"}).json()["data"]}
    assert listed["reject_autumn"]["rejected_reason"] == "INVALID_FORMAT"
    sim.faults(template_review={"reject_reason": "PROMOTIONAL"})
    manage(sim, "POST", json=new_template("reject_again"))
    again = sim_receiver.wait_for(lambda r: [u for u in status_updates(r)
                                             if u["message_template_name"] == "reject_again"],
                                  what="the third review")
    assert again[0]["reason"] == "PROMOTIONAL"


def test_a_named_template_can_be_created_with_named_examples(sim):
    tpl = {"name": "named_new", "language": "pt_BR", "category": "UTILITY",
           "parameter_format": "NAMED", "components": [
               {"type": "BODY", "text": "Ola {{first_name}}, pedido {{order_id}} enviado.",
                "example": {"body_text_named_params": [
                    {"param_name": "first_name", "example": "Ana"},
                    {"param_name": "order_id", "example": "A-1"}]}}]}
    resp = manage(sim, "POST", json=tpl)
    assert resp.status_code == 200 and resp.json()["category"] == "UTILITY"
    auth = manage(sim, "POST", json={"name": "otp_new", "language": "en", "category":
                                     "AUTHENTICATION", "components": [
                                         {"type": "BODY", "add_security_recommendation": True},
                                         {"type": "BUTTONS", "buttons": [
                                             {"type": "OTP", "otp_type": "COPY_CODE"}]}]})
    assert auth.status_code == 200, auth.text


def _bad_template(**change) -> dict:
    tpl = new_template()
    for key, value in change.items():
        if key[:4] == "comp" and key[4:].isdigit():
            tpl["components"][int(key[4:])] = value
        else:
            tpl[key] = value
    return tpl


@pytest.mark.parametrize("tpl,words", [
    (_bad_template(name="Autumn Sale"), "Param name"),
    (_bad_template(category="PROMO"), "Param category"),
    (_bad_template(language="english"), "Param language"),
    (_bad_template(components=[]), "Param components"),
    (_bad_template(comp1={"type": "BODY", "text": "Hi {{1}}, until {{2}}."}),
     "BODY has variables ['1', '2'] but no example"),
    (_bad_template(comp1={"type": "BODY", "text": "Hi {{1}}, until {{3}}.",
                          "example": {"body_text": [["a", "b"]]}}), "positional parameters"),
    (_bad_template(comp1={"type": "BODY", "text": "{{1}}, autumn prices.",
                          "example": {"body_text": [["a"]]}}), "start or end with a variable"),
    (_bad_template(comp0={"type": "HEADER", "format": "IMAGE"}), "header_handle"),
    (_bad_template(comp0={"type": "HEADER", "format": "GIF"}), "HEADER.format"),
    (_bad_template(comp2={"type": "BUTTONS", "buttons": [
        {"type": "URL", "text": "Shop", "url": "https://shop.example.com/a/{{1}}"}]}),
     "URL with a variable needs an example"),
    (_bad_template(comp2={"type": "BUTTONS", "buttons": [{"type": "COPY_CODE"}]}),
     "example must be the sample code"),
    (_bad_template(parameter_format="NAMED"), "is not a named parameter"),
])
def test_template_creation_checks_the_definition_like_meta(sim, tpl, words):
    resp = manage(sim, "POST", json=tpl)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["code"] == 100 and words in err["error_data"]["details"], err
    listed = manage(sim, "GET", params={"limit": 100}).json()["data"]
    assert "autumn_sale" not in {t["name"] for t in listed}


def test_the_same_name_and_language_cannot_be_created_twice(sim):
    assert manage(sim, "POST", json=new_template()).status_code == 200
    err = manage(sim, "POST", json=new_template()).json()["error"]
    assert err["code"] == 100 and err["error_subcode"] == 2388024
    assert manage(sim, "POST", json=new_template(language="es")).status_code == 200


def test_template_management_needs_a_token_of_that_waba(sim):
    assert manage(sim, "POST", token="nope", json=new_template()).status_code == 401
    other = manage(sim, "POST", token="tok-three", json=new_template())
    assert other.status_code == 400 and other.json()["error"]["error_subcode"] == 33
    gone = manage(sim, "DELETE", token="tok-three", params={"name": "order_update"})
    assert gone.json()["error"]["error_subcode"] == 33
    # WABA three's templates are its own: creating there leaves WABA one untouched.
    assert manage(sim, "POST", waba=WABA_THREE, token="tok-three", json=new_template()).status_code == 200
    assert manage(sim, "GET", params={"name": "autumn_sale"}).json()["data"] == []


def test_delete_by_name_removes_every_language_and_by_hsm_id_one(sim, sim_receiver):
    listed = manage(sim, "GET", params={"name": "order_update"}).json()["data"]
    assert {t["language"] for t in listed} == {"en_US", "es"}
    spanish = next(t for t in listed if t["language"] == "es")
    resp = manage(sim, "DELETE", params={"name": "order_update", "hsm_id": spanish["id"]})
    assert resp.json() == {"success": True}
    assert [t["language"] for t in manage(sim, "GET", params={"name": "order_update"}).json()["data"]] == ["en_US"]
    assert manage(sim, "DELETE", params={"name": "order_update"}).json() == {"success": True}
    assert manage(sim, "GET", params={"name": "order_update"}).json()["data"] == []
    body = [{"type": "body", "parameters": [text("Ana"), text("A-1")]}]
    error(send_template(sim, "order_update", body), 132001)
    events = sim_receiver.wait_for(lambda r: len(status_updates(r)) == 2 and status_updates(r),
                                   what="deletion webhooks")
    assert {(e["event"], e["message_template_language"], e["reason"]) for e in events} == {
        ("PENDING_DELETION", "es", None), ("PENDING_DELETION", "en_US", None)}
    # A deleted approved name cannot be reused for 30 days (sim clock).
    again = {"name": "order_update", "language": "en_US", "category": "UTILITY",
             "components": [{"type": "BODY", "text": "Your order is on its way."}]}
    assert manage(sim, "POST", json=again).json()["error"]["error_subcode"] == 2388023
    sim.clock(advance_s=30 * 86400 + 1)
    assert manage(sim, "POST", json=again).status_code == 200


def test_delete_errors(sim):
    assert manage(sim, "DELETE", params={"name": "no_such"}).json()["error"]["code"] == 100
    assert manage(sim, "DELETE").json()["error"]["code"] == 100
    disabled = manage(sim, "DELETE", params={"name": "legacy_notice"}).json()["error"]
    assert disabled["code"] == 100 and "disabled" in disabled["error_data"]["details"]


def test_template_status_control_sets_the_rejected_reason(sim, sim_receiver):
    sim.control("template_status", {"name": "promo_offer", "status": "REJECTED",
                                    "reason": "PROMOTIONAL"})
    tpl = manage(sim, "GET", params={"name": "promo_offer"}).json()["data"][0]
    assert tpl["status"] == "REJECTED" and tpl["rejected_reason"] == "PROMOTIONAL"


# --- quick-reply taps ------------------------------------------------------------------------

def tap_messages(receiver) -> list[dict]:
    return [m for m in receiver.messages() if m["type"] == "button"]


def test_a_quick_reply_tap_echoes_the_payload_the_send_gave(sim, sim_receiver):
    sent = send_template(sim, "spring_sale", good("spring_sale"))
    wamid = sent.json()["messages"][0]["id"]
    resp = sim.control("inbound", {"phone_number_id": ONE, "from": UK, "button": {"index": 1},
                                   "context_id": wamid})
    taps = sim_receiver.wait_for(tap_messages, what="the button message")
    assert taps == [{"context": {"from": NUMBERS[0]["display_phone_number"], "id": wamid},
                     "from": UK, "id": resp["wamid"], "timestamp": taps[0]["timestamp"],
                     "type": "button",
                     "button": {"payload": "STOP_PROMOS", "text": "Stop promotions"}}]


def test_without_a_payload_the_tap_carries_the_button_text(sim, sim_receiver):
    comps = [{"type": "body", "parameters": [text("Ana"), text("A-1")]}]
    wamid = send_template(sim, "order_update", comps).json()["messages"][0]["id"]
    sim.control("inbound", {"phone_number_id": ONE, "from": UK, "context_id": wamid,
                            "button": {"text": "Talk to an agent"}})
    taps = sim_receiver.wait_for(tap_messages, what="the button message")
    assert taps[0]["button"] == {"payload": "Talk to an agent", "text": "Talk to an agent"}


def test_a_tap_must_name_a_button_of_that_message_and_its_recipient(sim):
    wamid = send_template(sim, "spring_sale", good("spring_sale")).json()["messages"][0]["id"]
    for spec, frm in (({"index": 0}, UK), ({"index": 1}, "447700900999")):
        resp = sim.http.post("/_sim/inbound", json={"phone_number_id": ONE, "from": frm,
                                                    "button": spec, "context_id": wamid})
        assert resp.status_code == 400, resp.text
    # Without a known message, text (and payload) are taken as given.
    free = sim.http.post("/_sim/inbound", json={"phone_number_id": ONE, "from": UK,
                                                "button": {"text": "Yes", "payload": "Y"}})
    assert free.status_code == 200
    assert sim.http.post("/_sim/inbound", json={"phone_number_id": ONE, "from": UK,
                                                "button": {}}).status_code == 400


def test_quality_and_category_updates_come_as_metas_webhooks(sim, sim_receiver):
    tid = int(manage(sim, "GET", params={"name": "promo_offer"}).json()["data"][0]["id"])
    sim.control("template_quality", {"name": "promo_offer", "score": "RED", "waba_id": WABA_ONE})
    quality = sim_receiver.wait_for(lambda r: r.changes("message_template_quality_update"),
                                    what="the quality webhook")
    assert quality == [{"previous_quality_score": "GREEN", "new_quality_score": "RED",
                        "message_template_id": tid, "message_template_name": "promo_offer",
                        "message_template_language": "en_US"}]
    listed = manage(sim, "GET", params={"name": "promo_offer"}).json()["data"][0]
    assert listed["quality_score"]["score"] == "RED"
    sim.control("template_category", {"name": "promo_offer", "category": "UTILITY",
                                      "impending": True, "waba_id": WABA_ONE})
    sim.control("template_category", {"name": "promo_offer", "category": "UTILITY",
                                      "waba_id": WABA_ONE})
    updates = sim_receiver.wait_for(lambda r: len(r.changes("template_category_update")) == 2
                                    and r.changes("template_category_update"),
                                    what="two category webhooks")
    notice, change = sorted(updates, key=lambda u: "previous_category" in u)
    assert notice["new_category"] == "MARKETING" and notice["correct_category"] == "UTILITY"
    assert "category_update_timestamp" in notice
    assert (change["previous_category"], change["new_category"]) == ("MARKETING", "UTILITY")
    listed = manage(sim, "GET", params={"name": "promo_offer"}).json()["data"][0]
    assert (listed["category"], listed["previous_category"]) == ("UTILITY", "MARKETING")
    assert sim.http.post("/_sim/template_quality", json={"name": "nope", "score": "RED"}).status_code == 400
